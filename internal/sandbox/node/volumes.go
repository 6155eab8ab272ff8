package node

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	authenticationv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"

	"github.com/isthmus-mesh/isthmus/internal/sandbox/container"
)

// tokens remembers when each projected token file must be renewed.
type tokens struct {
	mu    sync.Mutex // guards renew
	renew map[string]time.Time
}

var podTokens sync.Map // pod uid -> *tokens

func (w *podWorker) tokens() *tokens {
	t, _ := podTokens.LoadOrStore(w.uid, &tokens{renew: map[string]time.Time{}})
	return t.(*tokens)
}

func (w *podWorker) volumeDir(name string) string { return filepath.Join(w.dir, "volumes", name) }

// writeVolumes materializes every volume of the pod under its directory.
// Called at setup and again periodically: ConfigMaps and Secrets are
// re-read, tokens renewed at 80% of their lifetime.
func (w *podWorker) writeVolumes(ctx context.Context, p *corev1.Pod) error {
	for _, v := range p.Spec.Volumes {
		if err := w.writeVolume(ctx, p, v); err != nil {
			return fmt.Errorf("volume %s: %w", v.Name, err)
		}
	}
	return nil
}

func (w *podWorker) writeVolume(ctx context.Context, p *corev1.Pod, v corev1.Volume) error {
	dir := w.volumeDir(v.Name)
	switch {
	case v.HostPath != nil:
		return nil // mounted straight from the host
	case v.EmptyDir != nil:
		return os.MkdirAll(dir, 0o777)
	case v.ConfigMap != nil:
		return w.writeConfigMap(ctx, p.Namespace, dir, v.ConfigMap.Name, v.ConfigMap.Items, v.ConfigMap.Optional, mode(v.ConfigMap.DefaultMode))
	case v.Secret != nil:
		return w.writeSecret(ctx, p.Namespace, dir, v.Secret.SecretName, v.Secret.Items, v.Secret.Optional, mode(v.Secret.DefaultMode))
	case v.DownwardAPI != nil:
		return w.writeDownward(p, dir, v.DownwardAPI.Items, mode(v.DownwardAPI.DefaultMode))
	case v.Projected != nil:
		m := mode(v.Projected.DefaultMode)
		for _, src := range v.Projected.Sources {
			var err error
			switch {
			case src.ServiceAccountToken != nil:
				err = w.writeToken(ctx, p, dir, src.ServiceAccountToken)
			case src.ConfigMap != nil:
				err = w.writeConfigMap(ctx, p.Namespace, dir, src.ConfigMap.Name, src.ConfigMap.Items, src.ConfigMap.Optional, m)
			case src.Secret != nil:
				err = w.writeSecret(ctx, p.Namespace, dir, src.Secret.Name, src.Secret.Items, src.Secret.Optional, m)
			case src.DownwardAPI != nil:
				err = w.writeDownward(p, dir, src.DownwardAPI.Items, m)
			default:
				err = fmt.Errorf("unsupported projected source (the sandbox supports serviceAccountToken, configMap, secret, downwardAPI)")
			}
			if err != nil {
				return err
			}
		}
		return nil
	}
	return fmt.Errorf("unsupported volume type (the sandbox supports emptyDir, configMap, secret, downwardAPI, projected, hostPath)")
}

func mode(m *int32) os.FileMode {
	if m == nil {
		return 0o644
	}
	return os.FileMode(*m)
}

func (w *podWorker) writeConfigMap(ctx context.Context, ns, dir, name string, items []corev1.KeyToPath, optional *bool, m os.FileMode) error {
	cm, err := w.a.cs.CoreV1().ConfigMaps(ns).Get(ctx, name, metav1.GetOptions{})
	if err != nil {
		if optional != nil && *optional {
			return os.MkdirAll(dir, 0o755)
		}
		return fmt.Errorf("configmap %s: %w", name, err)
	}
	data := map[string][]byte{}
	for k, v := range cm.Data {
		data[k] = []byte(v)
	}
	for k, v := range cm.BinaryData {
		data[k] = v
	}
	return writeItems(dir, data, items, m)
}

func (w *podWorker) writeSecret(ctx context.Context, ns, dir, name string, items []corev1.KeyToPath, optional *bool, m os.FileMode) error {
	s, err := w.a.cs.CoreV1().Secrets(ns).Get(ctx, name, metav1.GetOptions{})
	if err != nil {
		if optional != nil && *optional {
			return os.MkdirAll(dir, 0o755)
		}
		return fmt.Errorf("secret %s: %w", name, err)
	}
	return writeItems(dir, s.Data, items, m)
}

func writeItems(dir string, data map[string][]byte, items []corev1.KeyToPath, m os.FileMode) error {
	if len(items) == 0 {
		for k, v := range data {
			if err := writeFile(filepath.Join(dir, k), v, m); err != nil {
				return err
			}
		}
		return os.MkdirAll(dir, 0o755)
	}
	for _, it := range items {
		v, ok := data[it.Key]
		if !ok {
			return fmt.Errorf("no key %q", it.Key)
		}
		fm := m
		if it.Mode != nil {
			fm = os.FileMode(*it.Mode)
		}
		if err := writeFile(filepath.Join(dir, it.Path), v, fm); err != nil {
			return err
		}
	}
	return nil
}

func (w *podWorker) writeDownward(p *corev1.Pod, dir string, items []corev1.DownwardAPIVolumeFile, m os.FileMode) error {
	for _, it := range items {
		var v string
		var err error
		switch {
		case it.FieldRef != nil:
			v, err = w.fieldValue(p, it.FieldRef.FieldPath)
		case it.ResourceFieldRef != nil:
			v, err = resourceValue(p, corev1.Container{}, it.ResourceFieldRef)
		}
		if err != nil {
			return err
		}
		fm := m
		if it.Mode != nil {
			fm = os.FileMode(*it.Mode)
		}
		if err := writeFile(filepath.Join(dir, it.Path), []byte(v), fm); err != nil {
			return err
		}
	}
	return nil
}

// writeToken requests a pod-bound token with TokenRequest and writes it,
// unless the file is still fresh.
func (w *podWorker) writeToken(ctx context.Context, p *corev1.Pod, dir string, src *corev1.ServiceAccountTokenProjection) error {
	path := filepath.Join(dir, src.Path)
	t := w.tokens()
	t.mu.Lock()
	due, known := t.renew[path]
	t.mu.Unlock()
	if known && time.Now().Before(due) {
		return nil
	}
	exp := int64(3607)
	if src.ExpirationSeconds != nil {
		exp = *src.ExpirationSeconds
	}
	req := &authenticationv1.TokenRequest{Spec: authenticationv1.TokenRequestSpec{
		ExpirationSeconds: ptr.To(exp),
		BoundObjectRef:    &authenticationv1.BoundObjectReference{Kind: "Pod", APIVersion: "v1", Name: p.Name, UID: p.UID},
	}}
	if src.Audience != "" {
		req.Spec.Audiences = []string{src.Audience}
	}
	sa := p.Spec.ServiceAccountName
	if sa == "" {
		sa = "default"
	}
	got, err := w.a.cs.CoreV1().ServiceAccounts(p.Namespace).CreateToken(ctx, sa, req, metav1.CreateOptions{})
	if err != nil {
		return fmt.Errorf("token for service account %s: %w", sa, err)
	}
	if err := writeFile(path, []byte(got.Status.Token), 0o644); err != nil {
		return err
	}
	issued := time.Now()
	lifetime := got.Status.ExpirationTimestamp.Sub(issued)
	if asked := time.Duration(exp) * time.Second; lifetime > asked || lifetime <= 0 {
		lifetime = asked // the API server may extend it; renew on the asked schedule
	}
	t.mu.Lock()
	t.renew[path] = issued.Add(lifetime * 8 / 10)
	t.mu.Unlock()
	return nil
}

// refreshVolumes re-materializes volumes every 15 s until the pod ends.
func (w *podWorker) refreshVolumes(ctx context.Context) {
	defer podTokens.Delete(w.uid)
	tick := time.NewTicker(15 * time.Second)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		if err := w.writeVolumes(ctx, w.snapshot()); err != nil && ctx.Err() == nil {
			w.a.log.Warn("refresh volumes", "pod", w.key(), "err", err)
		}
	}
}

// writeFile replaces a file atomically so readers never see half a token.
func writeFile(path string, data []byte, m os.FileMode) error {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return err
	}
	if old, err := os.ReadFile(path); err == nil && string(old) == string(data) {
		return os.Chmod(path, m)
	}
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, data, m); err != nil {
		return err
	}
	if err := os.Chmod(tmp, m); err != nil {
		return err
	}
	return os.Rename(tmp, path)
}

// mounts lists the container's bind mounts: its volumeMounts, then the pod's
// resolv.conf and hosts.
func (w *podWorker) mounts(p *corev1.Pod, c corev1.Container) ([]container.Mount, error) {
	vols := map[string]corev1.Volume{}
	for _, v := range p.Spec.Volumes {
		vols[v.Name] = v
	}
	var out []container.Mount
	for _, vm := range c.VolumeMounts {
		v, ok := vols[vm.Name]
		if !ok {
			return nil, fmt.Errorf("volumeMount %s names no volume of the pod", vm.Name)
		}
		src := w.volumeDir(vm.Name)
		if v.HostPath != nil {
			src = v.HostPath.Path
			if v.HostPath.Type != nil && (*v.HostPath.Type == corev1.HostPathDirectoryOrCreate) {
				if err := os.MkdirAll(src, 0o755); err != nil {
					return nil, err
				}
			}
		}
		if vm.SubPath != "" {
			if strings.Contains(vm.SubPath, "..") {
				return nil, fmt.Errorf("volumeMount %s: subPath must not contain '..'", vm.Name)
			}
			src = filepath.Join(src, vm.SubPath)
			if _, err := os.Stat(src); os.IsNotExist(err) {
				if err := os.MkdirAll(src, 0o755); err != nil {
					return nil, err
				}
			}
		}
		out = append(out, container.Mount{Source: src, Target: vm.MountPath, ReadOnly: vm.ReadOnly})
	}
	if !p.Spec.HostNetwork {
		out = append(out,
			container.Mount{Source: filepath.Join(w.dir, "resolv.conf"), Target: "/etc/resolv.conf", ReadOnly: true},
			container.Mount{Source: filepath.Join(w.dir, "hosts"), Target: "/etc/hosts", ReadOnly: true})
	}
	return out, nil
}
