package cli

import (
	"log/slog"

	"github.com/spf13/cobra"

	"github.com/isthmus-mesh/isthmus/internal/demoapp"
)

func newDemoAppCmd() *cobra.Command {
	var addr string
	cmd := &cobra.Command{
		Use:   "demo-app",
		Short: "Run one service of the walkthrough's demo application",
		Long: `The demo application of the walkthrough: accounts, dashboard, profile and sleep,
a JWT issuer for RequestAuthentication and a trace collector.
Each server answers JSON and says which cluster (env CLUSTER_NAME), pod
(HOSTNAME) and node (NODE_NAME) served it; /healthz answers ok.`,
	}
	cmd.PersistentFlags().StringVar(&addr, "listen", ":8080", "address to serve on")
	var profileURL, accountsURL string
	profile := &cobra.Command{Use: "profile", Short: "GET /profile?id=N: the name of person N", Args: cobra.NoArgs,
		RunE: func(c *cobra.Command, _ []string) error {
			return demoapp.Serve(c.Context(), addr, demoapp.ProfileHandler(), slog.Default().With("app", "profile"))
		}}
	accounts := &cobra.Command{Use: "accounts", Short: "GET /accounts?id=N: the balance of account N", Args: cobra.NoArgs,
		RunE: func(c *cobra.Command, _ []string) error {
			return demoapp.Serve(c.Context(), addr, demoapp.AccountsHandler(), slog.Default().With("app", "accounts"))
		}}
	dashboard := &cobra.Command{Use: "dashboard", Short: "GET /dashboard?id=N: profile and account of N, aggregated", Args: cobra.NoArgs,
		RunE: func(c *cobra.Command, _ []string) error {
			return demoapp.Serve(c.Context(), addr, demoapp.DashboardHandler(profileURL, accountsURL), slog.Default().With("app", "dashboard"))
		}}
	dashboard.Flags().StringVar(&profileURL, "profile-url", "http://profile:8080", "base URL of the profile service")
	dashboard.Flags().StringVar(&accountsURL, "accounts-url", "http://accounts:8080", "base URL of the accounts service")
	sleep := &cobra.Command{Use: "sleep", Short: "Do nothing until stopped: a pod to exec curl from", Args: cobra.NoArgs,
		RunE: func(c *cobra.Command, _ []string) error {
			<-c.Context().Done()
			return nil
		}}
	var issuerName string
	issuer := &cobra.Command{Use: "issuer", Short: "GET /jwks.json and /token?sub=NAME&aud=A: a demo JWT issuer for RequestAuthentication", Args: cobra.NoArgs,
		Long: `A demo JWT issuer, Istio's sample jwt-server in one: /jwks.json is the key set
a RequestAuthentication's jwksUri names; /token?sub=NAME&aud=A&groups=G&ttl=1h
mints a token signed with it. It hands tokens to anyone: for trying JWT
policies, never for guarding anything. The key lives as long as the process.`,
		RunE: func(c *cobra.Command, _ []string) error {
			h, err := demoapp.IssuerHandler(issuerName)
			if err != nil {
				return err
			}
			return demoapp.Serve(c.Context(), addr, h, slog.Default().With("app", "issuer"))
		}}
	issuer.Flags().StringVar(&issuerName, "issuer", "https://issuer.demo.isthmus", "the iss claim of the tokens it mints")
	collector := &cobra.Command{Use: "collector", Short: "A demo trace collector: OTLP over gRPC in, GET /spans?trace=ID out", Args: cobra.NoArgs,
		Long: `A demo trace collector, to see the mesh's traces without a tracing backend:
it takes spans as OTLP over gRPC (h2c, on --listen) from the proxies of a
mesh whose meshConfig names it as an opentelemetry extension provider, and
shows the last 5000 on GET /spans as JSON (?trace=ID for one trace).
Deploy it without a sidecar, as a tracing backend is: the proxies' exports
are not traced then.`,
		RunE: func(c *cobra.Command, _ []string) error {
			return demoapp.Serve(c.Context(), addr, demoapp.CollectorHandler(), slog.Default().With("app", "collector"))
		}}
	cmd.AddCommand(profile, accounts, dashboard, sleep, issuer, collector)
	return cmd
}
