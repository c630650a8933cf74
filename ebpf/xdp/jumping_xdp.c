// SPDX-License-Identifier: Apache-2.0
/*
 * Jumping data-plane XDP program: steer tunnel data to the owner worker's AF_XDP socket.
 *
 * Ethernet -> IPv4 | IPv6 -> UDP to a port in `tunnel_ports` -> tunnel header:
 *   - data (type 4, >= 36 bytes) and heartbeat (type 5, exactly 60 bytes): look up the owner
 *     queue in `session_owner` (SessionId -> queue), else take the SessionId's top 8 bits
 *     (recorded in `last_queue`), and bpf_redirect_map(&xsks, rx_queue_index, XDP_PASS): an
 *     AF_XDP socket only takes frames of its own queue, so a frame for another owner goes to
 *     the receiving queue's worker, which hands it to the owner in userspace. An empty xsks
 *     slot falls back to XDP_PASS (counted separately as JX_REDIRECT_FAILED_PASS) so the
 *     kernel socket still sees it.
 *   - any other valid type (handshake, cookie, terminate, reattach): XDP_PASS to the kernel.
 *   - malformed tunnel messages (truncated, bad version, unknown type, bad length): XDP_DROP.
 *   - everything else, including VLAN-tagged frames and IPv6 with extension headers: XDP_PASS.
 *   - IP fragments of UDP (IPv4 MF or offset != 0; IPv6 fragment header): XDP_PASS, counted as
 *     JX_PASS_FRAGMENT. A non-first fragment has no UDP header, so it cannot be classified;
 *     the kernel reassembles and delivers the datagram to the gateway's UDP socket, whose
 *     slow path parses it like any other message. Dropping would black-hole clients behind
 *     paths with a small MTU without a trace.
 *
 * The message length is the UDP length field minus 8 (not data_end: short frames carry
 * Ethernet padding). The UDP length must fit in the frame and in the IP length.
 *
 * Layouts, constants and the counter enum: jumping_maps.h (mirrored in Rust by jumping-ebpf).
 *
 * Build: clang-19 -O2 -g -target bpf -I/usr/include/x86_64-linux-gnu -c jumping_xdp.c
 */
#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <linux/ipv6.h>
#include <linux/udp.h>
#include <bpf/bpf_endian.h>
#include <bpf/bpf_helpers.h>

#include "jumping_maps.h"

/* IPv4 frag_off bits (host order), as in the kernel's net/ip.h. */
#define JX_IP_MF 0x2000
#define JX_IP_OFFSET 0x1FFF
/* IPv6 fragment extension header: next header byte first, 8 bytes long. */
#define JX_NEXTHDR_FRAGMENT 44
#define JX_FRAG_HDR_LEN 8

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, JUMPING_MAX_TUNNEL_PORTS);
	__type(key, __u16);
	__type(value, __u8);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} tunnel_ports SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, JUMPING_MAX_SESSIONS);
	__type(key, __u64);
	__type(value, struct jumping_session_owner);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} session_owner SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_XSKMAP);
	__uint(max_entries, JUMPING_MAX_QUEUES);
	__type(key, __u32);
	__type(value, __u32);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} xsks SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, JX_COUNTER_MAX);
	__type(key, __u32);
	__type(value, __u64);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} counters SEC(".maps");

/* The queue the last steered packet on this CPU was sent to (also when the slot was empty). */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u32);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} last_queue SEC(".maps");

static __always_inline void bump(__u32 reason)
{
	__u64 *c = bpf_map_lookup_elem(&counters, &reason);

	if (c)
		*c += 1; /* per-CPU slot: no atomics needed */
}

static __always_inline int outcome(__u32 reason, int action)
{
	bump(reason);
	return action;
}

SEC("xdp")
int jumping_xdp(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	struct ethhdr *eth = data;
	struct udphdr *udp;
	__u32 ip_payload_len;

	if ((void *)(eth + 1) > data_end)
		return outcome(JX_PASS_NOT_TUNNEL, XDP_PASS);

	if (eth->h_proto == bpf_htons(ETH_P_IP)) {
		struct iphdr *ip = (void *)(eth + 1);
		__u32 ihl_bytes;
		__u32 tot_len;

		if ((void *)(ip + 1) > data_end)
			return outcome(JX_PASS_NOT_TUNNEL, XDP_PASS);
		if (ip->version != 4 || ip->ihl < 5 || ip->protocol != IPPROTO_UDP)
			return outcome(JX_PASS_NOT_TUNNEL, XDP_PASS);
		if (ip->frag_off & bpf_htons(JX_IP_MF | JX_IP_OFFSET))
			return outcome(JX_PASS_FRAGMENT, XDP_PASS);
		ihl_bytes = (__u32)ip->ihl * 4; /* 20..60 */
		tot_len = bpf_ntohs(ip->tot_len);
		if (tot_len < ihl_bytes)
			return outcome(JX_PASS_NOT_TUNNEL, XDP_PASS);
		ip_payload_len = tot_len - ihl_bytes;
		udp = (void *)ip + ihl_bytes;
	} else if (eth->h_proto == bpf_htons(ETH_P_IPV6)) {
		struct ipv6hdr *ip6 = (void *)(eth + 1);

		if ((void *)(ip6 + 1) > data_end)
			return outcome(JX_PASS_NOT_TUNNEL, XDP_PASS);
		if (ip6->nexthdr == JX_NEXTHDR_FRAGMENT) {
			__u8 *frag = (void *)(ip6 + 1);

			if ((void *)(frag + JX_FRAG_HDR_LEN) > data_end)
				return outcome(JX_PASS_NOT_TUNNEL, XDP_PASS);
			if (frag[0] == IPPROTO_UDP)
				return outcome(JX_PASS_FRAGMENT, XDP_PASS);
			return outcome(JX_PASS_NOT_TUNNEL, XDP_PASS);
		}
		if (ip6->nexthdr != IPPROTO_UDP)
			return outcome(JX_PASS_NOT_TUNNEL, XDP_PASS);
		ip_payload_len = bpf_ntohs(ip6->payload_len);
		udp = (void *)(ip6 + 1);
	} else {
		/* ARP, VLAN (0x8100 / 0x88a8) and everything else. */
		return outcome(JX_PASS_NOT_TUNNEL, XDP_PASS);
	}

	if ((void *)(udp + 1) > data_end)
		return outcome(JX_PASS_NOT_TUNNEL, XDP_PASS);
	{
		__u16 dport = bpf_ntohs(udp->dest);

		if (!bpf_map_lookup_elem(&tunnel_ports, &dport))
			return outcome(JX_PASS_NOT_TUNNEL, XDP_PASS);
	}

	/* From here on the packet is addressed to the tunnel: malformed means drop. */
	__u32 udp_len = bpf_ntohs(udp->len);
	__u8 *msg = (void *)(udp + 1);

	if (udp_len < sizeof(*udp) || udp_len > ip_payload_len)
		return outcome(JX_DROP_TRUNCATED, XDP_DROP);
	__u32 msg_len = udp_len - sizeof(*udp);

	if ((void *)msg + msg_len > data_end || msg_len < JUMPING_COMMON_HEADER_LEN)
		return outcome(JX_DROP_TRUNCATED, XDP_DROP);
	if ((void *)(msg + JUMPING_COMMON_HEADER_LEN) > data_end) /* for the verifier */
		return outcome(JX_DROP_TRUNCATED, XDP_DROP);

	if (msg[0] != JUMPING_VERSION)
		return outcome(JX_DROP_BAD_VERSION, XDP_DROP);
	__u8 type = msg[JUMPING_TYPE_OFFSET];

	if (type < JUMPING_TYPE_MIN || type > JUMPING_TYPE_MAX)
		return outcome(JX_DROP_UNKNOWN_TYPE, XDP_DROP);
	if (type == JUMPING_TYPE_DATA) {
		if (msg_len < JUMPING_DATA_MIN_LEN)
			return outcome(JX_DROP_BAD_LENGTH, XDP_DROP);
	} else if (type == JUMPING_TYPE_HEARTBEAT) {
		if (msg_len != JUMPING_HEARTBEAT_LEN)
			return outcome(JX_DROP_BAD_LENGTH, XDP_DROP);
	} else {
		return outcome(JX_PASS_CONTROL, XDP_PASS);
	}

	/* Data plane: steer to the owner. Length checks above imply this; the verifier needs it. */
	if ((void *)(msg + JUMPING_SESSION_ID_OFFSET + sizeof(__u64)) > data_end)
		return outcome(JX_DROP_TRUNCATED, XDP_DROP);
	__u64 sid_be;

	__builtin_memcpy(&sid_be, msg + JUMPING_SESSION_ID_OFFSET, sizeof(sid_be));
	__u64 sid = bpf_be64_to_cpu(sid_be);
	struct jumping_session_owner *owner = bpf_map_lookup_elem(&session_owner, &sid);
	__u32 queue;

	if (owner) {
		queue = owner->queue;
		bump(JX_STEER_SESSION_MAP);
	} else {
		queue = (__u32)(sid >> JUMPING_OWNER_CORE_SHIFT);
		bump(JX_STEER_SID_BITS);
	}
	{
		__u32 zero = 0;
		__u32 *last = bpf_map_lookup_elem(&last_queue, &zero);

		if (last)
			*last = queue;
	}

	/*
	 * An AF_XDP socket only receives frames of the queue it is bound to, so the frame goes to
	 * the socket of the queue it arrived on; when that worker is not the owner it hands the
	 * packet to the owner over a userspace ring (docs/ARCHITECTURE.md, "Cross-queue
	 * handoff"). The owner queue computed above is recorded in `last_queue` for tests and
	 * diagnostics.
	 */
	long action = bpf_redirect_map(&xsks, ctx->rx_queue_index, XDP_PASS);

	if (action == XDP_REDIRECT)
		return outcome(JX_REDIRECT_DATA, XDP_REDIRECT);
	return outcome(JX_REDIRECT_FAILED_PASS, XDP_PASS);
}

char LICENSE[] SEC("license") = "Apache-2.0";
