package remotesecret

import (
	"errors"
	"fmt"
	"net/url"

	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
)

// RESTConfig turns a remote secret's kubeconfig into a client config,
// refusing what could run code or read files on the control plane's host
// (exec plugins, auth providers other than oidc, token and certificate file
// paths), as Istio does for kubeconfigs it did not write itself.
func RESTConfig(kubeconfig []byte) (*rest.Config, error) {
	if len(kubeconfig) == 0 {
		return nil, errors.New("kubeconfig is empty")
	}
	cfg, err := clientcmd.Load(kubeconfig)
	if err != nil {
		return nil, fmt.Errorf("kubeconfig does not parse: %w", err)
	}
	ctxName := cfg.CurrentContext
	if ctxName == "" && len(cfg.Contexts) == 1 {
		for n := range cfg.Contexts {
			ctxName = n
		}
	}
	kctx, ok := cfg.Contexts[ctxName]
	if !ok {
		return nil, fmt.Errorf("kubeconfig has no current-context %q", cfg.CurrentContext)
	}
	if ai := cfg.AuthInfos[kctx.AuthInfo]; ai != nil {
		switch {
		case ai.Exec != nil:
			return nil, errors.New("kubeconfig uses an exec credential plugin, which the control plane does not run")
		case ai.AuthProvider != nil && ai.AuthProvider.Name != "oidc":
			return nil, fmt.Errorf("kubeconfig uses auth provider %q; only oidc is allowed", ai.AuthProvider.Name)
		case ai.TokenFile != "":
			return nil, errors.New("kubeconfig reads a token file; embed the token instead")
		case ai.ClientCertificate != "" || ai.ClientKey != "":
			return nil, errors.New("kubeconfig names client certificate files; embed client-certificate-data instead")
		}
	}
	if cl := cfg.Clusters[kctx.Cluster]; cl != nil && cl.CertificateAuthority != "" {
		return nil, errors.New("kubeconfig names a certificate-authority file; embed certificate-authority-data instead")
	}
	rc, err := clientcmd.NewDefaultClientConfig(*cfg, &clientcmd.ConfigOverrides{CurrentContext: ctxName}).ClientConfig()
	if err != nil {
		return nil, fmt.Errorf("kubeconfig is invalid: %w", err)
	}
	// The control plane sends the reader's token to this server and
	// trusts what it says about every pod and endpoint: it must be the
	// cluster's API server, proven by TLS.
	if rc.Insecure {
		return nil, errors.New("kubeconfig sets insecure-skip-tls-verify, so anyone on the path could pose as the cluster's API server; embed its certificate-authority-data instead")
	}
	if u, err := url.Parse(rc.Host); err == nil && u.Scheme == "http" {
		return nil, fmt.Errorf("kubeconfig's server %s is plain http; use the API server's https address and certificate-authority-data", rc.Host)
	}
	return rc, nil
}
