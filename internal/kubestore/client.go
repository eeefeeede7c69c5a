package kubestore

import (
	"fmt"
	"time"

	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
)

// Client limits. The default client-side rate limit (5 requests a second)
// would throttle an agent's loop (a handful of requests a loop); the
// request timeout is a backstop behind the callers' own contexts.
const (
	clientQPS     = 50
	clientBurst   = 100
	clientTimeout = 15 * time.Second
)

// NewClient returns a Kubernetes client from a kubeconfig file, or from
// the pod's service account when kubeconfig is empty.
func NewClient(kubeconfig string) (kubernetes.Interface, error) {
	var cfg *rest.Config
	var err error
	if kubeconfig == "" {
		cfg, err = rest.InClusterConfig()
		if err != nil {
			return nil, fmt.Errorf("kubernetes client from the pod's service account (set kubernetes.kubeconfig outside a pod): %w", err)
		}
	} else {
		cfg, err = clientcmd.BuildConfigFromFlags("", kubeconfig)
		if err != nil {
			return nil, fmt.Errorf("kubernetes client from %s: %w", kubeconfig, err)
		}
	}
	cfg.QPS, cfg.Burst, cfg.Timeout = clientQPS, clientBurst, clientTimeout
	cfg.UserAgent = "holdfast"
	cli, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		return nil, fmt.Errorf("kubernetes client: %w", err)
	}
	return cli, nil
}
