package node

import (
	"context"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// statusLoop pushes the pod's status whenever it changes, at most every
// 100 ms, and as the kubelet's status manager does, checks it against the
// API's every 10 s: a push lost to an API server that was away (a Get that
// failed while it restarted) or a write by someone else the watch missed
// is put right then.
func (w *podWorker) statusLoop(ctx context.Context) {
	check := time.NewTicker(10 * time.Second)
	defer check.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-w.changed:
		case <-check.C:
			// The API's status itself, not the watch's copy: a watch that
			// was broken by the API server's restart may not have brought
			// the node lifecycle controller's write yet.
			cur, err := w.fromAPI(ctx)
			if err != nil || cur.UID != w.uid || !drifted(cur.Status, w.status(cur.Status)) {
				continue
			}
		}
		time.Sleep(100 * time.Millisecond) // coalesce bursts
		select {
		case <-w.changed:
		default:
		}
		if !w.pushStatus(ctx) && ctx.Err() == nil {
			// Again in a second, not at the next check.
			time.AfterFunc(time.Second, w.markChanged)
		}
	}
}

// pushStatus writes the worker's status; false when the API server could
// not be asked (worth trying again), true when it was written or the pod
// is gone.
func (w *podWorker) pushStatus(ctx context.Context) bool {
	for attempt := 0; attempt < 5; attempt++ {
		cur, err := w.fromAPI(ctx)
		if apierrors.IsNotFound(err) {
			return true
		}
		if err != nil {
			if ctx.Err() == nil {
				w.a.log.Warn("get pod for status", "pod", w.key(), "err", err)
			}
			return false
		}
		if cur.UID != w.uid {
			return true
		}
		cur.Status = w.status(cur.Status)
		_, err = w.a.cs.CoreV1().Pods(cur.Namespace).UpdateStatus(ctx, cur, metav1.UpdateOptions{})
		switch {
		case err == nil || apierrors.IsNotFound(err):
			return true
		case !apierrors.IsConflict(err):
			if ctx.Err() == nil {
				w.a.log.Warn("update pod status", "pod", w.key(), "err", err)
			}
			return false
		}
	}
	return false
}

// fromAPI reads the worker's pod from the API server.
func (w *podWorker) fromAPI(ctx context.Context) (*corev1.Pod, error) {
	p := w.snapshot()
	return w.a.cs.CoreV1().Pods(p.Namespace).Get(ctx, p.Name, metav1.GetOptions{})
}

// status computes the pod status from the worker's state, keeping the
// conditions others own (PodScheduled, readiness gates).
func (w *podWorker) status(old corev1.PodStatus) corev1.PodStatus {
	w.mu.Lock()
	p := w.pod
	st := corev1.PodStatus{
		HostIP:    w.a.cfg.Address.String(),
		HostIPs:   []corev1.HostIP{{IP: w.a.cfg.Address.String()}},
		StartTime: &w.startTime,
		QOSClass:  old.QOSClass,
	}
	if p.Spec.HostNetwork {
		st.PodIP = w.a.cfg.Address.String()
	} else if w.hasNet {
		st.PodIP = w.net.IP.String()
	}
	if st.PodIP != "" {
		st.PodIPs = []corev1.PodIP{{IP: st.PodIP}}
	}
	setupErr, initDone, failed := w.setupErr, w.initDone, w.failed
	w.mu.Unlock()

	for _, c := range w.inits {
		cs := c.status()
		// The kubelet's reading: an init container that completed is ready.
		cs.Ready = cs.State.Terminated != nil && cs.State.Terminated.ExitCode == 0
		st.InitContainerStatuses = append(st.InitContainerStatuses, cs)
	}
	allReady, allDone, anyFailed, anyRunning := true, true, false, false
	for _, c := range w.ctrs {
		cs := c.status()
		st.ContainerStatuses = append(st.ContainerStatuses, cs)
		if !cs.Ready {
			allReady = false
		}
		switch {
		case cs.State.Terminated != nil:
			if cs.State.Terminated.ExitCode != 0 {
				anyFailed = true
			}
		case cs.State.Running != nil:
			anyRunning = true
			allDone = false
		default:
			allDone = false
		}
	}
	policy := p.Spec.RestartPolicy
	switch {
	case failed:
		st.Phase = corev1.PodFailed
	case !initDone:
		st.Phase = corev1.PodPending
	case allDone && policy != corev1.RestartPolicyAlways && len(w.ctrs) > 0:
		st.Phase = corev1.PodSucceeded
		if anyFailed {
			st.Phase = corev1.PodFailed
		}
	case anyRunning || allDone:
		st.Phase = corev1.PodRunning
	default:
		st.Phase = corev1.PodPending
		for _, c := range w.ctrs {
			if c.restartCount() > 0 {
				st.Phase = corev1.PodRunning
			}
		}
	}
	if setupErr != "" {
		st.Reason, st.Message = "SandboxSetupFailed", setupErr
	}
	now := metav1.Now()
	cond := func(t corev1.PodConditionType, ok bool, reason string) {
		s := corev1.ConditionFalse
		if ok {
			s = corev1.ConditionTrue
			reason = ""
		}
		c := corev1.PodCondition{Type: t, Status: s, Reason: reason, LastTransitionTime: now}
		for _, o := range old.Conditions {
			if o.Type == t && o.Status == s {
				c.LastTransitionTime = o.LastTransitionTime
			}
		}
		st.Conditions = append(st.Conditions, c)
	}
	for _, o := range old.Conditions {
		switch o.Type {
		case corev1.PodReadyToStartContainers, corev1.PodInitialized, corev1.ContainersReady, corev1.PodReady:
		default:
			st.Conditions = append(st.Conditions, o)
		}
	}
	sandboxReady := st.PodIP != "" && setupErr == ""
	ready := allReady && initDone && st.Phase == corev1.PodRunning
	cond(corev1.PodReadyToStartContainers, sandboxReady, "")
	cond(corev1.PodInitialized, initDone, "ContainersNotInitialized")
	cond(corev1.ContainersReady, ready, "ContainersNotReady")
	cond(corev1.PodReady, ready, "ContainersNotReady")
	return st
}

func (c *ctr) restartCount() int32 {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.restarts
}

func (c *ctr) status() corev1.ContainerStatus {
	c.mu.Lock()
	defer c.mu.Unlock()
	cs := corev1.ContainerStatus{
		Name:                 c.spec.Name,
		State:                c.state,
		LastTerminationState: c.lastState,
		Ready:                c.ready,
		RestartCount:         c.restarts,
		Image:                c.spec.Image,
		ImageID:              c.imageID,
		Started:              &c.started,
	}
	if c.cmd != nil && c.cmd.Process != nil {
		cs.ContainerID = containerID(c.cmd.Process.Pid)
	} else if c.state.Terminated != nil {
		cs.ContainerID = c.state.Terminated.ContainerID
	}
	started := c.started && c.state.Running != nil
	cs.Started = &started
	return cs
}
