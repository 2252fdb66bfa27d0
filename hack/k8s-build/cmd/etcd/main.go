// Command etcd is upstream etcd's main, built at the go.etcd.io/etcd/server/v3
// version that k8s.io/kubernetes v1.35.4 requires (the one kube-apiserver is
// tested against).
package main

import (
	"os"

	"go.etcd.io/etcd/server/v3/etcdmain"
)

func main() { etcdmain.Main(os.Args) }
