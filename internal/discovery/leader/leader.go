// Package leader picks the one control plane replica that writes to the
// clusters. Every replica serves proxies, signs certificates and answers
// webhooks; but the writers (every namespace's istio-ca-root-cert, the
// webhooks' caBundle and failurePolicy, a remote's istiod endpoints) would
// fight over the same objects if each replica ran them, so they act only
// in the replica that holds a Kubernetes Lease, as istiod's leader
// election does. A replica that loses the Lease stops writing at once and
// stands for it again; a replica that stops cleanly hands it over.
package leader

import (
	"context"
	"log/slog"
	"sync"
	"time"

	"github.com/google/uuid"
	"github.com/prometheus/client_golang/prometheus"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/leaderelection"
	"k8s.io/client-go/tools/leaderelection/resourcelock"
)

// LeaseName is the Lease the replicas of one control plane share, in its
// namespace.
const LeaseName = "isthmus-leader"

// Election timings, client-go's defaults: a leader that vanishes without
// handing over is replaced within LeaseDuration + RetryPeriod.
const (
	LeaseDuration = 15 * time.Second
	RenewDeadline = 10 * time.Second
	RetryPeriod   = 2 * time.Second
)

// Elector stands for the Lease until its context ends.
type Elector struct {
	Client    kubernetes.Interface
	Namespace string
	// Identity names this replica in the Lease: its pod name, made unique
	// (two processes on one host share a hostname).
	Identity string
	Log      *slog.Logger
	// OnLead runs each time this replica becomes the leader, so writers
	// that skipped work as followers catch up.
	OnLead func()

	mu      sync.Mutex
	leading bool
	gauge   prometheus.Gauge
}

// New makes an elector named after instance (its pod).
func New(client kubernetes.Interface, namespace, instance string, log *slog.Logger, metrics prometheus.Registerer) *Elector {
	e := &Elector{Client: client, Namespace: namespace, Identity: instance + "_" + uuid.NewString(), Log: log,
		gauge: prometheus.NewGauge(prometheus.GaugeOpts{Name: "isthmus_control_plane_leader",
			Help: "1 while this replica holds the Lease " + LeaseName + " and writes to the clusters (root certificates, webhooks, remote istiod endpoints)"})}
	if metrics != nil {
		metrics.MustRegister(e.gauge)
	}
	return e
}

// Leading says whether this replica may write now.
func (e *Elector) Leading() bool {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.leading
}

func (e *Elector) set(leading bool) {
	e.mu.Lock()
	e.leading = leading
	e.mu.Unlock()
	if e.gauge != nil {
		e.gauge.Set(map[bool]float64{true: 1}[leading])
	}
}

// Run stands for the Lease, leads while it holds it, and stands again
// after losing it, until ctx ends; then it releases the Lease so another
// replica leads without waiting for it to expire.
func (e *Elector) Run(ctx context.Context) error {
	lock := &resourcelock.LeaseLock{
		LeaseMeta:  metav1.ObjectMeta{Name: LeaseName, Namespace: e.Namespace},
		Client:     e.Client.CoordinationV1(),
		LockConfig: resourcelock.ResourceLockConfig{Identity: e.Identity},
	}
	for ctx.Err() == nil {
		le, err := leaderelection.NewLeaderElector(leaderelection.LeaderElectionConfig{
			Lock: lock, Name: LeaseName, ReleaseOnCancel: true,
			LeaseDuration: LeaseDuration, RenewDeadline: RenewDeadline, RetryPeriod: RetryPeriod,
			Callbacks: leaderelection.LeaderCallbacks{
				OnStartedLeading: func(context.Context) {
					e.set(true)
					e.Log.Info("leading: this replica writes root certificates, webhook bundles and remote istiod endpoints", "lease", e.Namespace+"/"+LeaseName, "identity", e.Identity)
					if e.OnLead != nil {
						e.OnLead()
					}
				},
				OnStoppedLeading: func() {
					if e.Leading() {
						e.Log.Warn("no longer leading; writes stop until this replica holds the lease again", "lease", e.Namespace+"/"+LeaseName)
					}
					e.set(false)
				},
				OnNewLeader: func(id string) {
					if id != e.Identity {
						e.Log.Info("following", "leader", id)
					}
				},
			},
		})
		if err != nil {
			return err
		}
		le.Run(ctx)
	}
	return nil
}
