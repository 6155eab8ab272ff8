package inspect

import (
	"crypto/x509"
	"fmt"
)

// WorkloadCertificate is the proxy's own certificate: the leaf of the
// "default" secret's chain (Istio's SDS resource name for the workload
// identity), as proxy-config secret lists it.
func (d *Dump) WorkloadCertificate() (*x509.Certificate, error) {
	for name, sec := range d.secrets() {
		if name != "default" {
			continue
		}
		chain := Certificates(sec.GetTlsCertificate().GetCertificateChain().GetInlineBytes())
		if len(chain) == 0 {
			return nil, fmt.Errorf("the default secret holds no PEM certificate")
		}
		return chain[0], nil
	}
	return nil, fmt.Errorf("no active default secret: the proxy has no workload certificate (is it connected to the control plane's CA?)")
}
