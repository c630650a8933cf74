// SPDX-License-Identifier: Apache-2.0
/*
 * Host program built and run by jumping-ebpf's build.rs: prints every constant, enum value
 * and struct layout of jumping_maps.h as "NAME VALUE" lines. The crate's unit test compares
 * them with the Rust mirrors, and checks that every JUMPING_ / JX_ name in the header appears
 * here, so a constant added to the header without a mirror fails the test.
 */
#include <stddef.h>
#include <stdio.h>

#include "jumping_maps.h"

#define N(name, value) printf("%s %llu\n", (name), (unsigned long long)(value))
#define P(name) N(#name, name)

int main(void)
{
	P(JUMPING_VERSION);
	P(JUMPING_TYPE_OFFSET);
	P(JUMPING_SESSION_ID_OFFSET);
	P(JUMPING_COMMON_HEADER_LEN);
	P(JUMPING_DATA_HEADER_LEN);
	P(JUMPING_TAG_LEN);
	P(JUMPING_DATA_MIN_LEN);
	P(JUMPING_HEARTBEAT_LEN);
	P(JUMPING_OWNER_CORE_SHIFT);
	P(JUMPING_TYPE_HANDSHAKE_INIT);
	P(JUMPING_TYPE_HANDSHAKE_RESPONSE);
	P(JUMPING_TYPE_COOKIE_REPLY);
	P(JUMPING_TYPE_DATA);
	P(JUMPING_TYPE_HEARTBEAT);
	P(JUMPING_TYPE_TERMINATE);
	P(JUMPING_TYPE_REATTACH_REQUEST);
	P(JUMPING_TYPE_REATTACH_CHALLENGE);
	P(JUMPING_TYPE_REATTACH_RESPONSE);
	P(JUMPING_TYPE_REATTACH_ACK);
	P(JUMPING_TYPE_REATTACH_REJECT);
	P(JUMPING_TYPE_MIN);
	P(JUMPING_TYPE_MAX);
	P(JUMPING_MAX_TUNNEL_PORTS);
	P(JUMPING_MAX_SESSIONS);
	P(JUMPING_MAX_QUEUES);
	P(JUMPING_MAX_INSIDE_ROUTES);

	N("SIZEOF_SESSION_OWNER", sizeof(struct jumping_session_owner));
	N("ALIGNOF_SESSION_OWNER", _Alignof(struct jumping_session_owner));
	N("OFFSETOF_SESSION_OWNER_QUEUE", offsetof(struct jumping_session_owner, queue));
	N("OFFSETOF_SESSION_OWNER_FLAGS", offsetof(struct jumping_session_owner, flags));
	N("SIZEOF_COUNTER_ENUM_VALUE", sizeof(enum jumping_xdp_counter));

	P(JX_PASS_NOT_TUNNEL);
	P(JX_PASS_CONTROL);
	P(JX_PASS_FRAGMENT);
	P(JX_REDIRECT_DATA);
	P(JX_REDIRECT_FAILED_PASS);
	P(JX_DROP_TRUNCATED);
	P(JX_DROP_BAD_VERSION);
	P(JX_DROP_UNKNOWN_TYPE);
	P(JX_DROP_BAD_LENGTH);
	P(JX_STEER_SESSION_MAP);
	P(JX_STEER_SID_BITS);
	P(JX_COUNTER_MAX);
	return 0;
}
