/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Layouts shared between the Jumping XDP program (jumping_xdp.c) and its Rust loader
 * (crate jumping-ebpf, src/lib.rs). This header is the one definition: the Rust crate mirrors
 * every constant, enum value and struct below, and its unit test `layout_matches_c_header`
 * compares the mirrors against values printed by a host program compiled from this header
 * (xdp/layout_dump.c), and checks that every JUMPING_/JX_ name here is printed. Change both
 * sides together.
 *
 * Only plain C and <linux/types.h>: it is included by the BPF program and by the host program.
 */
#ifndef JUMPING_MAPS_H
#define JUMPING_MAPS_H

#include <linux/types.h>

/* ---- Tunnel wire format (mirror of jumping_protocol::wire) ---------------------------- */

/* Byte 0 of every message. */
#define JUMPING_VERSION 1
/* Offset of the message type. */
#define JUMPING_TYPE_OFFSET 1
/* Offset of the big-endian 64-bit SessionId in session-scoped messages. */
#define JUMPING_SESSION_ID_OFFSET 4
/* Length of the common header (version, type, epoch); shorter is "truncated". */
#define JUMPING_COMMON_HEADER_LEN 4
/* Data header (version, type, epoch, SessionId, counter) and AEAD tag. */
#define JUMPING_DATA_HEADER_LEN 20
#define JUMPING_TAG_LEN 16
/* Minimum data message: header + tag (empty plaintext). */
#define JUMPING_DATA_MIN_LEN 36
/* Heartbeat: header + 24-byte plaintext + tag, exactly. */
#define JUMPING_HEARTBEAT_LEN 60
/* The SessionId's top 8 bits name the owner core: owner = sid >> 56. */
#define JUMPING_OWNER_CORE_SHIFT 56

/* Message type codes (byte 1). */
#define JUMPING_TYPE_HANDSHAKE_INIT 1
#define JUMPING_TYPE_HANDSHAKE_RESPONSE 2
#define JUMPING_TYPE_COOKIE_REPLY 3
#define JUMPING_TYPE_DATA 4
#define JUMPING_TYPE_HEARTBEAT 5
#define JUMPING_TYPE_TERMINATE 6
#define JUMPING_TYPE_REATTACH_REQUEST 7
#define JUMPING_TYPE_REATTACH_CHALLENGE 8
#define JUMPING_TYPE_REATTACH_RESPONSE 9
#define JUMPING_TYPE_REATTACH_ACK 10
#define JUMPING_TYPE_REATTACH_REJECT 11
/* Valid type codes are JUMPING_TYPE_MIN..=JUMPING_TYPE_MAX. */
#define JUMPING_TYPE_MIN 1
#define JUMPING_TYPE_MAX 11

/* ---- Map sizes ------------------------------------------------------------------------ */

/* tunnel_ports: UDP destination ports (host byte order) the gateway listens on. */
#define JUMPING_MAX_TUNNEL_PORTS 16
/* session_owner: explicit owner overrides (sessions migrated off their encoded core). */
#define JUMPING_MAX_SESSIONS 65536
/* xsks: one AF_XDP socket per queue; a SessionId can name any of 256 owners. */
#define JUMPING_MAX_QUEUES 256
/* inside_routes (inside program): client virtual addresses, IPv4 as ::ffff:a.b.c.d. */
#define JUMPING_MAX_INSIDE_ROUTES 65536

/* ---- Map values ----------------------------------------------------------------------- */

/*
 * Value of session_owner. Key: the SessionId as a host-order __u64 (the numeric value, i.e.
 * the wire's big-endian bytes already converted).
 */
struct jumping_session_owner {
	/* Index into xsks: the queue whose AF_XDP socket belongs to the owner worker. */
	__u32 queue;
	/* Reserved, zero. Keeps the struct 8 bytes with no padding. */
	__u32 flags;
};

/* ---- Counters ------------------------------------------------------------------------- */

/*
 * Index into the per-CPU array `counters` (__u64 values). Every packet the program sees
 * increments exactly one outcome counter (JX_PASS_*, JX_REDIRECT_*, JX_DROP_*). A steered
 * packet (data/heartbeat) additionally increments one JX_STEER_* counter naming where its
 * owner came from; the chosen queue is also written to the per-CPU `last_queue` slot.
 */
enum jumping_xdp_counter {
	/* Outcome: not for us (not Ethernet/IPv4/IPv6 + UDP to a tunnel port, VLAN, IPv6 ext
	 * headers, or headers cut short before the UDP port) -> XDP_PASS. */
	JX_PASS_NOT_TUNNEL = 0,
	/* Outcome: valid tunnel control message (handshake, cookie, terminate, reattach). */
	JX_PASS_CONTROL = 1,
	/* Outcome: IPv4 UDP fragment (MF set or offset != 0) -> XDP_PASS, kernel reassembles. */
	JX_PASS_FRAGMENT = 2,
	/* Outcome: data/heartbeat redirected into the owner's AF_XDP socket. */
	JX_REDIRECT_DATA = 3,
	/* Outcome: data/heartbeat whose owner slot in xsks is empty: fell back to XDP_PASS. */
	JX_REDIRECT_FAILED_PASS = 4,
	/* Outcome: UDP length field claims more than the frame holds, or payload < 4 bytes. */
	JX_DROP_TRUNCATED = 5,
	/* Outcome: byte 0 != JUMPING_VERSION. */
	JX_DROP_BAD_VERSION = 6,
	/* Outcome: byte 1 outside JUMPING_TYPE_MIN..=JUMPING_TYPE_MAX. */
	JX_DROP_UNKNOWN_TYPE = 7,
	/* Outcome: data shorter than JUMPING_DATA_MIN_LEN, heartbeat != JUMPING_HEARTBEAT_LEN. */
	JX_DROP_BAD_LENGTH = 8,
	/* Steering source: owner found in session_owner. */
	JX_STEER_SESSION_MAP = 9,
	/* Steering source: owner from the SessionId's top 8 bits. */
	JX_STEER_SID_BITS = 10,
	/* Number of counters (size of `counters`). */
	JX_COUNTER_MAX = 11,
};

#endif /* JUMPING_MAPS_H */
