# Sourced by replay.sh and report.sh: which binaries and clusters to use.
#   ISTHMUS   the isthmus binary (default: isthmus on PATH, else bin/isthmus)
#   KUBECTL   kubectl (default: kubectl on PATH, else the sandbox's)
#   KUBECONFIG  (default: the sandbox's, from `isthmus sandbox kubeconfig --path`)
#   PRIMARY, REMOTE  the two contexts (default cluster-eks, cluster-aks); the
#             mesh names the clusters cluster-eks and cluster-aks whatever
#             the contexts are called (the files' clusterName, injectionPath)
#   HUB, TAG  where the mesh's images come from (install's hub and tag; the
#             demo app becomes HUB/demo-app:TAG); default: the installer's
#   EKS_GATEWAY_FROM, AKS_GATEWAY_FROM  comma-separated CIDRs that alone may
#             reach each east-west gateway (its loadBalancerSourceRanges);
#             default: anyone
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/../.." && pwd)
ISTHMUS=${ISTHMUS:-$(command -v isthmus || echo "$root/bin/isthmus")}
export KUBECONFIG=${KUBECONFIG:-$("$ISTHMUS" sandbox kubeconfig --path)}
KUBECTL=${KUBECTL:-$(command -v kubectl || echo "${ISTHMUS_CACHE:-/var/cache/isthmus}/kube/v1.37.2/bin/kubectl")}
EKS=${PRIMARY:-cluster-eks}
AKS=${REMOTE:-cluster-aks}
isthmus() { "$ISTHMUS" "$@"; }
kubectl() { "$KUBECTL" "$@"; }
