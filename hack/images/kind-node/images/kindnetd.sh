#!/bin/bash
# Stand-in for kind's kindnetd (its source is not served by the Go module proxy), doing the two things a
# kind cluster needs of it, with kind's own DaemonSet (hostNetwork, NET_ADMIN, HOST_IP and POD_SUBNET):
#   - write this node's CNI config: ptp + host-local on the node's podCIDR, then portmap;
#   - route every other node's podCIDR through that node's InternalIP (the nodes share one L2 network).
# It reconciles every 10 s. No NetworkPolicy enforcement and no masquerading beyond the cluster network.
set -u
CONF=/etc/cni/net.d/10-kindnet.conflist

write_conf() {
  local subnet=$1 tmp=$CONF.tmp
  cat > "$tmp" << JSON
{
  "cniVersion": "0.3.1",
  "name": "kindnet",
  "plugins": [
    {"type": "ptp", "ipMasq": false, "mtu": 1500,
     "ipam": {"type": "host-local", "dataDir": "/run/cni-ipam-state",
              "routes": [{"dst": "0.0.0.0/0"}], "ranges": [[{"subnet": "$subnet"}]]}},
    {"type": "portmap", "capabilities": {"portMappings": true}}
  ]
}
JSON
  if ! cmp -s "$tmp" "$CONF"; then
    mv "$tmp" "$CONF"
    echo "kindnetd: wrote $CONF for $subnet"
  else
    rm -f "$tmp"
  fi
}

echo "kindnetd: node IP ${HOST_IP:?}, cluster pod subnet ${POD_SUBNET:-unset}"
while :; do
  nodes=$(kubectl get nodes -o jsonpath='{range .items[*]}{.spec.podCIDR}{" "}{.status.addresses[?(@.type=="InternalIP")].address}{"\n"}{end}' 2>&1) \
    || { echo "kindnetd: listing nodes failed: $nodes"; sleep 2; continue; }
  while read -r cidr ip; do
    [[ -n $cidr && -n $ip ]] || continue
    if [[ $ip == "$HOST_IP" ]]; then
      write_conf "$cidr"
    elif [[ $(ip route show "$cidr") != *"via $ip "* ]]; then
      ip route replace "$cidr" via "$ip" && echo "kindnetd: route $cidr via $ip"
    fi
  done <<< "$nodes"
  sleep 10
done
