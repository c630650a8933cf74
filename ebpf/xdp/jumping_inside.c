// SPDX-License-Identifier: Apache-2.0
/*
 * Jumping inside-NIC XDP program: steer packets for clients into the inside AF_XDP sockets.
 *
 * Attached to the inside NIC when the inside interface is AF_XDP (`[inside] kind = "af_xdp"`).
 * Ethernet -> IPv4 | IPv6 -> destination address:
 *   - the destination is a client's virtual address (a key of `inside_routes`, programmed by
 *     the data plane's control thread when a session is installed, removed when it is
 *     retired): bpf_redirect_map(&inside_xsks, rx_queue_index, XDP_PASS), into the AF_XDP
 *     socket of the receiving queue, whose worker seals the packet (or hands it to the
 *     session's owner). An empty slot falls back to XDP_PASS.
 *   - everything else (ARP, NDP, traffic to the gateway itself, VLAN tags, frames cut short
 *     before the destination address): XDP_PASS to the kernel.
 *
 * Keys of `inside_routes` are 16-byte addresses: IPv6 as is, IPv4 as the IPv4-mapped IPv6
 * address ::ffff:a.b.c.d (the Rust side uses `Ipv4Addr::to_ipv6_mapped`). Maps are pinned by
 * name next to the outside program's, with names of their own.
 *
 * Build: clang-19 -O2 -g -target bpf -I/usr/include/x86_64-linux-gnu -c jumping_inside.c
 */
#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/in6.h>
#include <linux/ip.h>
#include <linux/ipv6.h>
#include <bpf/bpf_endian.h>
#include <bpf/bpf_helpers.h>

#include "jumping_maps.h"

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, JUMPING_MAX_INSIDE_ROUTES);
	__type(key, struct in6_addr);
	__type(value, __u32);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} inside_routes SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_XSKMAP);
	__uint(max_entries, JUMPING_MAX_QUEUES);
	__type(key, __u32);
	__type(value, __u32);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} inside_xsks SEC(".maps");

SEC("xdp")
int jumping_inside(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	struct ethhdr *eth = data;
	struct in6_addr key;

	if ((void *)(eth + 1) > data_end)
		return XDP_PASS;
	__builtin_memset(&key, 0, sizeof(key));
	if (eth->h_proto == bpf_htons(ETH_P_IP)) {
		struct iphdr *ip = (void *)(eth + 1);

		if ((void *)(ip + 1) > data_end || ip->version != 4)
			return XDP_PASS;
		key.s6_addr[10] = 0xff;
		key.s6_addr[11] = 0xff;
		__builtin_memcpy(&key.s6_addr[12], &ip->daddr, 4);
	} else if (eth->h_proto == bpf_htons(ETH_P_IPV6)) {
		struct ipv6hdr *ip6 = (void *)(eth + 1);

		if ((void *)(ip6 + 1) > data_end || ip6->version != 6)
			return XDP_PASS;
		__builtin_memcpy(&key, &ip6->daddr, sizeof(key));
	} else {
		return XDP_PASS;
	}
	if (!bpf_map_lookup_elem(&inside_routes, &key))
		return XDP_PASS;
	return bpf_redirect_map(&inside_xsks, ctx->rx_queue_index, XDP_PASS);
}

char LICENSE[] SEC("license") = "Apache-2.0";
