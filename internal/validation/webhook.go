package validation

import (
	"fmt"
	"log/slog"
	"net/http"
	"strings"

	admissionv1 "k8s.io/api/admission/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/isthmus-mesh/isthmus/internal/admission"
)

// Handler serves AdmissionReview v1 requests (Istio's /validate): a
// refused object gets 400 with every error; an accepted one carries the
// warnings, which kubectl prints.
func Handler(log *slog.Logger) http.Handler {
	return admission.Handler(func(_ *http.Request, req *admissionv1.AdmissionRequest) *admissionv1.AdmissionResponse {
		resp := Admit(req)
		if !resp.Allowed {
			log.Info("configuration refused", "kind", req.Kind.Kind, "namespace", req.Namespace, "name", req.Name, "reason", resp.Result.Message)
		}
		return resp
	})
}

// Admit decides one admission request.
func Admit(req *admissionv1.AdmissionRequest) *admissionv1.AdmissionResponse {
	resp := &admissionv1.AdmissionResponse{UID: req.UID, Allowed: true}
	if req.Operation == admissionv1.Delete || len(req.Object.Raw) == 0 {
		return resp
	}
	res, ok, err := Object(req.Object.Raw)
	switch {
	case err != nil:
		resp.Allowed = false
		resp.Result = &metav1.Status{Status: metav1.StatusFailure, Code: http.StatusBadRequest, Reason: metav1.StatusReasonBadRequest, Message: err.Error()}
	case !ok:
	case len(res.Errors) > 0:
		resp.Allowed = false
		resp.Result = &metav1.Status{Status: metav1.StatusFailure, Code: http.StatusBadRequest, Reason: metav1.StatusReasonBadRequest,
			Message: fmt.Sprintf("configuration is invalid: %s: %s", res, strings.Join(res.Errors, "; "))}
	default:
		for _, w := range res.Warnings {
			resp.Warnings = append(resp.Warnings, res.String()+": "+w)
		}
	}
	return resp
}
