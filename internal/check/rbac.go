package check

import (
	"errors"
	"fmt"
	"regexp"
	"strings"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
)

// permission is what an authorizer refused the check's credentials.
type permission struct {
	user, verb, resource, group, namespace, path string
}

// rbacDenial is the authorizer's message (the API server's
// forbiddenMessage): User "u" cannot VERB resource "R" in API group "G"
// in the namespace "N" | at the cluster scope; or cannot VERB path "P".
var rbacDenial = regexp.MustCompile(`User "([^"]*)" cannot (\S+) (?:resource "([^"]+)" in API group "([^"]*)"(?: in the namespace "([^"]+)")?|path "([^"]+)")`)

// forbidden says whether err is an authorization (RBAC) refusal, and what
// was refused. Other 403s (Pod Security admission, a ResourceQuota, a
// policy webhook) are not: they say something of the object, not of the
// check's credentials.
func forbidden(err error) (permission, bool) {
	if err == nil || !apierrors.IsForbidden(err) {
		return permission{}, false
	}
	var se apierrors.APIStatus
	msg := err.Error()
	if errors.As(err, &se) {
		msg = se.Status().Message
	}
	m := rbacDenial.FindStringSubmatch(msg)
	if m == nil {
		return permission{}, false
	}
	return permission{user: m[1], verb: m[2], resource: m[3], group: m[4], namespace: m[5], path: m[6]}, true
}

// resourceName is the resource as kubectl names it: pods, deployments.apps.
func (p permission) resourceName() string {
	res, _, _ := strings.Cut(p.resource, "/")
	if p.group != "" {
		res += "." + p.group
	}
	return res
}

// String: "create namespaces (cluster-wide)", "get pods/log in namespace x".
func (p permission) String() string {
	if p.path != "" {
		return fmt.Sprintf("%s the path %s", p.verb, p.path)
	}
	res := p.resourceName()
	if _, sub, ok := strings.Cut(p.resource, "/"); ok {
		res += "/" + sub
	}
	if p.namespace != "" {
		return fmt.Sprintf("%s %s in namespace %s", p.verb, res, p.namespace)
	}
	return fmt.Sprintf("%s %s (cluster-wide)", p.verb, res)
}

// canI is the kubectl command that asks for the permission.
func (p permission) canI(context string) string {
	if p.path != "" {
		return fmt.Sprintf("kubectl --context %s auth can-i %s %s", context, p.verb, p.path)
	}
	s := fmt.Sprintf("kubectl --context %s auth can-i %s %s", context, p.verb, p.resourceName())
	if _, sub, ok := strings.Cut(p.resource, "/"); ok {
		s += " --subresource=" + sub
	}
	if p.namespace != "" {
		return s + " -n " + p.namespace
	}
	return s + " --all-namespaces"
}
