# Sourced by replay.sh and report.sh: which binaries and clusters to use.
#   ISTHMUS   the isthmus binary (default: isthmus on PATH, else bin/isthmus)
#   KUBECTL   kubectl (default: kubectl on PATH, else the sandbox's)
#   KUBECONFIG  (default: the sandbox's, from `isthmus sandbox kubeconfig --path`)
#   PRIMARY, REMOTE  the two contexts (default cluster-eks, cluster-aks)
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/../.." && pwd)
ISTHMUS=${ISTHMUS:-$(command -v isthmus || echo "$root/bin/isthmus")}
export KUBECONFIG=${KUBECONFIG:-$("$ISTHMUS" sandbox kubeconfig --path)}
KUBECTL=${KUBECTL:-$(command -v kubectl || echo "${ISTHMUS_CACHE:-/var/cache/isthmus}/kube/v1.34.4/bin/kubectl")}
EKS=${PRIMARY:-cluster-eks}
AKS=${REMOTE:-cluster-aks}
isthmus() { "$ISTHMUS" "$@"; }
kubectl() { "$KUBECTL" "$@"; }
