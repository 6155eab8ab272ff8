#!/usr/bin/env bash
# Replays the walkthrough (README.md next to this file) step by step against
# the clusters of the current kubeconfig: by default the isthmus sandbox.
# Settings: see env.sh; WORK is where apiserver-creds-aks.yaml is written
# (default: next to this script).
set -euo pipefail
source "$(dirname "$0")/env.sh"
WORK=${WORK:-$here}
cd "$here"

step() { printf '\n== Step %s\n' "$*"; }
run() { printf '$ %s\n' "$*"; "$@"; }

# images: --set hub and tag when HUB and TAG say (a registry of your own).
images=()
if [[ -n ${HUB:-} ]]; then images+=(--set "hub=$HUB"); fi
if [[ -n ${TAG:-} ]]; then images+=(--set "tag=$TAG"); fi
# from CIDRS: the --set flags that fence a gateway to those sources.
from() {
	local i=0 r
	for r in ${1//,/ }; do
		printf -- '--set\ncomponents.ingressGateways[0].k8s.service.loadBalancerSourceRanges[%d]=%s\n' "$i" "$r"
		i=$((i + 1))
	done
}
# (Written for bash 3.2 too, macOS's: no mapfile, empty arrays guarded.)
eks_from=() aks_from=()
while IFS= read -r l; do eks_from+=("$l"); done < <(from "${EKS_GATEWAY_FROM:-}")
while IFS= read -r l; do aks_from+=("$l"); done < <(from "${AKS_GATEWAY_FROM:-}")
# demo_app FILE CONTEXT: the demo's manifest, its image from HUB when set.
demo_app() {
	if [[ -z ${HUB:-} ]]; then
		run kubectl apply -f "$1" --context "$2"
		return
	fi
	local image="$HUB/demo-app:${TAG:-latest}"
	printf '$ sed "s#image: isthmus/demo-app#image: %s#" %s | kubectl apply -f - --context %s\n' "$image" "$1" "$2"
	sed "s#image: isthmus/demo-app\$#image: $image#" "$1" | kubectl apply -f - --context "$2"
}

step "1.1: install the control plane in $EKS"
run isthmus install -f cluster-eks-primary.yaml ${images[@]+"${images[@]}"} -y --context "$EKS"

step "1.2: install the east-west gateway in $EKS"
run isthmus install -f east-west-gateway-cluster-eks.yaml ${images[@]+"${images[@]}"} ${eks_from[@]+"${eks_from[@]}"} --context "$EKS" -y

step "1.3: expose istiod and the services through the gateway in $EKS"
run kubectl apply -f expose-istiod.yaml --context "$EKS"
run kubectl apply -f expose-services.yaml --context "$EKS"

step "1.4: the address of the east-west gateway of $EKS"
run kubectl get service -n istio-system --context "$EKS"
GW=$(isthmus gateway address --context "$EKS")
echo "remotePilotAddress: $GW"

step "2.1: prepare istio-system in $AKS (its network, its control plane's cluster)"
kubectl get namespace istio-system --context "$AKS" >/dev/null 2>&1 ||
	run kubectl create -f cluster-aks-remote-namespace-prep.yaml --context "$AKS"

step "2.2: install the remote profile in $AKS, pointing at the gateway of $EKS"
run isthmus install -f cluster-aks-remote.yaml --set "values.global.remotePilotAddress=$GW" ${images[@]+"${images[@]}"} --context "$AKS" -y

step "3.1: create the remote secret of $AKS"
printf '$ isthmus x create-remote-secret --name cluster-aks --context %s > %s\n' "$AKS" "$WORK/apiserver-creds-aks.yaml"
isthmus x create-remote-secret --name cluster-aks --context "$AKS" >"$WORK/apiserver-creds-aks.yaml"

step "3.2: apply it in $EKS"
run kubectl apply -f "$WORK/apiserver-creds-aks.yaml" --context "$EKS"

step "3.3: install the east-west gateway in $AKS and expose it"
run isthmus install -f east-west-gateway-cluster-aks.yaml ${images[@]+"${images[@]}"} ${aks_from[@]+"${aks_from[@]}"} --context "$AKS" -y
run kubectl apply -f expose-istiod.yaml --context "$AKS"
run kubectl apply -f expose-services.yaml --context "$AKS"

step "4: deploy the demo app: everything in $EKS, profile also in $AKS"
demo_app demo-app/cluster-eks.yaml "$EKS"
demo_app demo-app/cluster-aks.yaml "$AKS"
for d in accounts dashboard profile sleep; do
	run kubectl rollout status deployment/$d -n multicluster --timeout 3m --context "$EKS"
done
run kubectl rollout status deployment/profile -n multicluster --timeout 3m --context "$AKS"
run kubectl get pods -n multicluster --context "$EKS"
run kubectl get pods -n multicluster --context "$AKS"
printf '\nwalkthrough replayed; the remote secret is in %s\n' "$WORK/apiserver-creds-aks.yaml"
