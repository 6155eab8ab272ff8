// Package sandbox runs real Kubernetes clusters on one Linux machine, each on
// its own isolated network, so the multicluster walkthrough runs without
// Docker or a cloud. It knows nothing of the mesh: it is just Kubernetes.
//
// Sub-packages: kubebin builds and caches the Kubernetes binaries, pki makes
// cluster certificates, network builds the namespaces and links, process
// runs detached components, controlplane describes each cluster's
// etcd/apiserver/controller-manager/scheduler, cloud plays the provider
// around the clusters (hostname load balancers and the internet's DNS).
package sandbox
