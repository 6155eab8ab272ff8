#!/usr/bin/env bash
# Prints what the walkthrough built (run after replay.sh): the demo's pods,
# the image digest every container runs, dashboard?id=4, how 200 calls from sleep to profile split over the two
# clusters, the identities on a cross-cluster call, and the endpoints sleep's
# sidecar has for profile (the remote ones are the remote gateway's address).
set -euo pipefail
source "$(dirname "$0")/env.sh"
sleep_sh() { kubectl --context "$EKS" -n multicluster exec deploy/sleep -c sleep -- sh -c "$1"; }

echo "== Pods of the demo (2/2: the app and its istio-proxy)"
for c in "$EKS" "$AKS"; do
	echo "-- $c"
	kubectl --context "$c" -n multicluster get pods
done

echo
echo "== Images the mesh runs (imageID: the digest each container was pulled at)"
for c in "$EKS" "$AKS"; do
	for ns in istio-system multicluster; do
		kubectl --context "$c" -n "$ns" get pods -o jsonpath='{range .items[*]}{range .status.containerStatuses[*]}'"$c"'{"\t"}{.name}{"\t"}{.imageID}{"\n"}{end}{end}'
	done
done | sort | uniq -c | awk '{printf "%-12s %-13s x%-2s %s\n", $2, $3, $1, $4}'

echo
echo "== curl http://dashboard:8080/dashboard?id=4 (from sleep in $EKS)"
sleep_sh 'curl -sS --max-time 10 http://dashboard:8080/dashboard?id=4'
echo

echo
echo "== 200 calls from sleep ($EKS) to profile: which cluster answered"
sleep_sh 'for i in $(seq 200); do curl -sS --max-time 5 http://profile:8080/profile?id=4; echo; done' |
	sed -n 's/.*"servedBy":{"cluster":"\([^"]*\)".*/\1/p' | sort | uniq -c

echo
echo "== Identities on a call answered by $AKS (the server's view of the client, from XFCC)"
for _ in $(seq 20); do
	answer=$(sleep_sh 'curl -sS --max-time 5 http://profile:8080/profile?id=4')
	if [[ $answer == *"\"cluster\":\"cluster-aks\""* ]]; then
		echo "$answer" | sed -n 's/.*"callerXFCC":"\(.*\)".*/\1/p' | tr ';' '\n' | sed -n 's/^By=/server: /p; s/^URI=/client: /p'
		break
	fi
done

echo
echo "== isthmus proxy-config endpoints deployment/sleep.multicluster --context $EKS (profile)"
isthmus proxy-config endpoints deployment/sleep.multicluster --context "$EKS" --cluster "outbound|8080||profile.multicluster.svc.cluster.local"
echo "   ($(isthmus gateway address --context "$AKS"):15443 is the east-west gateway of $AKS)"

echo
echo "== isthmus proxy-status --context $EKS"
isthmus proxy-status --context "$EKS"
