//! The nftables redirect that steers the client's gateway traffic into the relay.

/// The nftables table the ruleset creates (family `ip`).
pub const TABLE: &str = "jumping_impair";

/// The nftables ruleset to load with `nft -f` inside the middle namespace: every UDP datagram
/// arriving for port `gateway_port` (before routing) is redirected to the local port
/// `listen_port`, where the relay listens.
///
/// ```text
/// table ip jumping_impair
/// delete table ip jumping_impair
/// table ip jumping_impair {
///     chain prerouting {
///         type nat hook prerouting priority dstnat; policy accept;
///         udp dport 51820 redirect to :40000
///     }
/// }
/// ```
///
/// The first two lines make loading idempotent (a stale table is replaced). `redirect` is a
/// DNAT to the address of the receiving interface, so conntrack rewrites the relay's replies
/// (sent from the listen port to the client) back to the gateway's address and port: the client
/// sees the gateway answer. The relay's own upstream traffic leaves through the output hook and
/// is not redirected. Remove the table with [`redirect_delete_ruleset`].
pub fn redirect_ruleset(listen_port: u16, gateway_port: u16) -> String {
    format!(
        "table ip {TABLE}\n\
         delete table ip {TABLE}\n\
         table ip {TABLE} {{\n\
         \tchain prerouting {{\n\
         \t\ttype nat hook prerouting priority dstnat; policy accept;\n\
         \t\tudp dport {gateway_port} redirect to :{listen_port}\n\
         \t}}\n\
         }}\n"
    )
}

/// The nftables script (for `nft -f`) removing what [`redirect_ruleset`] added; the shell
/// equivalent is `nft delete table ip jumping_impair`.
pub fn redirect_delete_ruleset() -> String {
    format!("delete table ip {TABLE}\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ruleset_text() {
        let r = redirect_ruleset(40000, 51820);
        assert!(r.contains("table ip jumping_impair {"));
        assert!(r.contains("type nat hook prerouting priority dstnat;"));
        assert!(r.contains("udp dport 51820 redirect to :40000\n"));
        assert_eq!(
            redirect_delete_ruleset(),
            "delete table ip jumping_impair\n"
        );
    }
}
