package proxyview

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"sort"

	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	route "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	jwtv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/jwt_authn/v3"
	hcm "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	"google.golang.org/protobuf/proto"
	securityv1 "istio.io/client-go/pkg/apis/security/v1"
	"k8s.io/apimachinery/pkg/labels"

	"github.com/isthmus-mesh/isthmus/internal/discovery/jwks"
)

// ResolveJWT is the jwt_authn filter config of the RequestAuthentications
// that apply to a workload (its namespace's and the root namespace's,
// without a selector or with one matching its labels), in Istio's shape:
// a provider "origins-N" per jwtRule and one rule for every path that
// requires any of them or no token at all. So a request with a token no
// provider accepts gets 401, one without a token passes unauthenticated,
// and AuthorizationPolicy decides from there. keys gives a jwksUri's key
// set. nil when none applies.
func ResolveJWT(ras []*securityv1.RequestAuthentication, rootNamespace, namespace string, podLabels map[string]string, keys func(uri string) string, warn func(string)) *jwtv3.JwtAuthentication {
	var applied []*securityv1.RequestAuthentication
	for _, ra := range ras {
		if ra.Namespace != namespace && ra.Namespace != rootNamespace {
			continue
		}
		if sel := ra.Spec.GetSelector().GetMatchLabels(); len(sel) > 0 && !labels.SelectorFromSet(sel).Matches(labels.Set(podLabels)) {
			continue
		}
		applied = append(applied, ra)
	}
	sort.Slice(applied, func(i, j int) bool {
		return applied[i].Namespace+"/"+applied[i].Name < applied[j].Namespace+"/"+applied[j].Name
	})
	providers := map[string]*jwtv3.JwtProvider{}
	var any []*jwtv3.JwtRequirement
	for _, ra := range applied {
		for i, r := range ra.Spec.GetJwtRules() {
			where := fmt.Sprintf("RequestAuthentication %s/%s jwtRules[%d]", ra.Namespace, ra.Name, i)
			set := jwks.None
			switch {
			case r.GetJwks() != "":
				if s, err := jwks.Check(r.GetJwks()); err != nil {
					warn(where + ": jwks: " + err.Error() + "; its tokens are refused")
				} else {
					set = s
				}
			case r.GetJwksUri() != "" && keys != nil:
				set = keys(r.GetJwksUri())
			default:
				warn(where + ": neither jwksUri nor jwks is set (isthmus does not discover keys from the issuer); its tokens are refused")
			}
			p := &jwtv3.JwtProvider{Issuer: r.GetIssuer(), Audiences: r.GetAudiences(), Forward: r.GetForwardOriginalToken(),
				ForwardPayloadHeader: r.GetOutputPayloadToHeader(), FromParams: r.GetFromParams(), FromCookies: r.GetFromCookies(),
				PayloadInMetadata:   r.GetIssuer(),
				JwksSourceSpecifier: &jwtv3.JwtProvider_LocalJwks{LocalJwks: &core.DataSource{Specifier: &core.DataSource_InlineString{InlineString: set}}}}
			for _, h := range r.GetFromHeaders() {
				p.FromHeaders = append(p.FromHeaders, &jwtv3.JwtHeader{Name: h.GetName(), ValuePrefix: h.GetPrefix()})
			}
			for _, c := range r.GetOutputClaimToHeaders() {
				p.ClaimToHeaders = append(p.ClaimToHeaders, &jwtv3.JwtClaimToHeader{HeaderName: c.GetHeader(), ClaimName: c.GetClaim()})
			}
			name := fmt.Sprintf("origins-%d", len(providers))
			providers[name] = p
			any = append(any, &jwtv3.JwtRequirement{RequiresType: &jwtv3.JwtRequirement_ProviderName{ProviderName: name}})
		}
	}
	if len(providers) == 0 {
		return nil
	}
	any = append(any, &jwtv3.JwtRequirement{RequiresType: &jwtv3.JwtRequirement_AllowMissing{}})
	return &jwtv3.JwtAuthentication{Providers: providers, Rules: []*jwtv3.RequirementRule{{
		Match: &route.RouteMatch{PathSpecifier: &route.RouteMatch_Prefix{Prefix: "/"}},
		RequirementType: &jwtv3.RequirementRule_Requires{Requires: &jwtv3.JwtRequirement{RequiresType: &jwtv3.JwtRequirement_RequiresAny{
			RequiresAny: &jwtv3.JwtRequirementOrList{Requirements: any}}}}}}}
}

// jwtFilters is the jwt_authn HTTP filter to put before RBAC, if any.
func jwtFilters(j *jwtv3.JwtAuthentication) []*hcm.HttpFilter {
	if j == nil {
		return nil
	}
	return []*hcm.HttpFilter{{Name: "envoy.filters.http.jwt_authn", ConfigType: &hcm.HttpFilter_TypedConfig{TypedConfig: mustAny(j)}}}
}

// jwtKey identifies a jwt_authn config, for sharing generated listeners.
func jwtKey(j *jwtv3.JwtAuthentication) string {
	if j == nil {
		return ""
	}
	b, _ := proto.MarshalOptions{Deterministic: true}.Marshal(j)
	h := sha256.Sum256(b)
	return hex.EncodeToString(h[:8])
}
