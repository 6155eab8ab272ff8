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

step "1.1: install the control plane in $EKS"
run isthmus install -f cluster-eks-primary.yaml -y --context "$EKS"

step "1.2: install the east-west gateway in $EKS"
run isthmus install -f east-west-gateway-cluster-eks.yaml --context "$EKS" -y

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
run isthmus install -f cluster-aks-remote.yaml --set "values.global.remotePilotAddress=$GW" --context "$AKS" -y

step "3.1: create the remote secret of $AKS"
printf '$ isthmus x create-remote-secret --name %s --context %s > %s\n' "$AKS" "$AKS" "$WORK/apiserver-creds-aks.yaml"
isthmus x create-remote-secret --name "$AKS" --context "$AKS" >"$WORK/apiserver-creds-aks.yaml"

step "3.2: apply it in $EKS"
run kubectl apply -f "$WORK/apiserver-creds-aks.yaml" --context "$EKS"

step "3.3: install the east-west gateway in $AKS and expose it"
run isthmus install -f east-west-gateway-cluster-aks.yaml --context "$AKS" -y
run kubectl apply -f expose-istiod.yaml --context "$AKS"
run kubectl apply -f expose-services.yaml --context "$AKS"

step "4: deploy the demo app: everything in $EKS, profile also in $AKS"
run kubectl apply -f demo-app/cluster-eks.yaml --context "$EKS"
run kubectl apply -f demo-app/cluster-aks.yaml --context "$AKS"
for d in accounts dashboard profile sleep; do
	run kubectl rollout status deployment/$d -n multicluster --timeout 3m --context "$EKS"
done
run kubectl rollout status deployment/profile -n multicluster --timeout 3m --context "$AKS"
run kubectl get pods -n multicluster --context "$EKS"
run kubectl get pods -n multicluster --context "$AKS"
printf '\nwalkthrough replayed; the remote secret is in %s\n' "$WORK/apiserver-creds-aks.yaml"
