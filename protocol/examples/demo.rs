//! The Jumping demo, protocol core edition: one session survives a NAT rebind, a switch to a
//! second client path, key rotations and a dead path, in a deterministic simulated network.
//!
//! Run with `cargo xtask demo`. Every line printed comes from the real protocol objects
//! (client and gateway) exchanging real encrypted datagrams; only the network is simulated.

use std::time::Duration;

use jumping_protocol::client::LocalPath;
use jumping_protocol::testing::{no_duplicates, Sim};
use jumping_protocol::{Event, Policy, SessionId};

fn describe(e: &Event) -> Option<String> {
    Some(match e {
        Event::SessionCreated {
            session_id,
            client_key_id,
            path,
            ..
        } => {
            format!("SESSION_CREATED      session {session_id}  client key {client_key_id}  path {path}")
        }
        Event::StateChanged {
            from,
            to,
            reason,
            version,
            ..
        } => {
            format!("STATE_CHANGED        {from} -> {to}  reason {reason}  version {version}")
        }
        Event::PathSwitched {
            from_path,
            to_path,
            recovery_ms,
            version,
            ..
        } => format!(
            "PATH_SWITCHED        {} -> {to_path}  version {version}{}",
            from_path.map_or_else(|| "(none)".to_string(), |p| p.to_string()),
            recovery_ms.map_or_else(String::new, |ms| format!("  recovery {ms} ms"))
        ),
        Event::ReattachRejected { code, path, .. } => {
            format!("REATTACH_REJECTED    {} from {path}", code.as_str())
        }
        Event::KeyRotated { key_epoch, .. } => format!("KEY_ROTATED          epoch {key_epoch}"),
        Event::SessionTerminated {
            reason,
            session_age_ms,
            switches_total,
            ..
        } => {
            format!("SESSION_TERMINATED   reason {reason}  age {session_age_ms} ms  switches {switches_total}")
        }
        Event::PolicyLimit {
            limit,
            threshold,
            observed,
            ..
        } => {
            format!("POLICY_LIMIT         {limit} threshold {threshold} observed {observed}")
        }
        Event::Security { kind, source, .. } => {
            format!("SECURITY_EVENT       {} from {source}", kind.as_str())
        }
        _ => return None,
    })
}

struct Demo {
    sim: Sim,
    shown: usize,
}

impl Demo {
    fn step(&mut self, title: &str) {
        println!("\n== {title}");
    }

    fn show_events(&mut self) {
        for (e, at) in self.sim.gw_events[self.shown..]
            .iter()
            .zip(&self.sim.gw_event_times[self.shown..])
        {
            if let Some(line) = describe(e) {
                println!("  [{:>8.3} s] gateway  {line}", at.as_nanos() as f64 / 1e9);
            }
        }
        self.shown = self.sim.gw_events.len();
    }

    fn traffic(&mut self, sid: SessionId, d: Duration) {
        let (c, g) = (self.sim.sent_c2g, self.sim.sent_g2c);
        let (dc, dg) = (self.sim.gw_delivered.len(), self.sim.client_delivered.len());
        self.sim.traffic(sid, d, Duration::from_millis(10));
        self.sim.run_for(Duration::from_millis(100));
        self.show_events();
        let sent = (self.sim.sent_c2g - c, self.sim.sent_g2c - g);
        let got = (
            self.sim.gw_delivered.len() - dc,
            self.sim.client_delivered.len() - dg,
        );
        println!(
            "  traffic: client->gateway {} sent, {} delivered; gateway->client {} sent, {} delivered",
            sent.0, got.0, sent.1, got.1
        );
    }
}

fn main() {
    let policy = Policy {
        rekey_after: Duration::from_secs(10),
        ..Policy::default()
    };
    let mut d = Demo {
        sim: Sim::new(2026, policy),
        shown: 0,
    };
    println!("Jumping: the session is the anchor, the transport is volatile.");
    println!("Simulated network: one-way latency 20 ms (RTT 40 ms); client has two local paths.");
    println!("Policy: SPEC.md defaults, rekey every 10 s for the demo.");

    d.step("1. Handshake (Noise IK, mutual authentication) and traffic both ways");
    let sid = d.sim.connect();
    d.show_events();
    d.traffic(sid, Duration::from_secs(2));

    d.step("2. NAT rebind: the NAT gives path 0 a new public port, nothing tells the client");
    let old = d.sim.net.nat[&LocalPath(0)];
    let new = d.sim.net.rebind(LocalPath(0));
    println!("  NAT mapping {old} -> {new}");
    d.traffic(sid, Duration::from_secs(2));
    let s = d.sim.session(sid);
    println!(
        "  session {sid} state {} version {} active path {}",
        s.state(),
        s.version(),
        s.active.map_or("-".into(), |p| p.to_string())
    );
    println!(
        "  handshakes so far: {} (no renegotiation)",
        d.sim.gw.counters().handshakes
    );
    println!("  return traffic kept going to the old mapping until the new one was validated (one RTT): those are the packets lost");

    d.step("3. Switch to the second client path (the client found a better one)");
    let now = d.sim.now;
    d.sim.client.reattach(now, LocalPath(1));
    d.traffic(sid, Duration::from_secs(2));

    d.step("4. Key rotation under traffic (previous/current/next keys, no packet lost)");
    d.traffic(sid, Duration::from_secs(12));
    println!("  key epoch now {}", d.sim.session(sid).key_epoch());

    d.step("5. Path 1 dies; after path_dead_after the gateway declares TRANSPORT_DEAD; the client jumps back to path 0");
    d.sim.net.down.push(LocalPath(1));
    d.sim.run_for(Duration::from_secs(6));
    d.show_events();
    let now = d.sim.now;
    d.sim.client.reattach(now, LocalPath(0));
    d.traffic(sid, Duration::from_secs(1));

    d.step("6. The client ends the session explicitly");
    let now = d.sim.now;
    d.sim.client.terminate(now);
    d.sim.run_for(Duration::from_millis(100));
    d.show_events();

    d.step("Summary");
    let s = d.sim.session(sid);
    println!("  SessionId unchanged throughout: {sid}");
    println!(
        "  final state {} version {}  switches {}  handshakes (first + rekeys) {}",
        s.state(),
        s.version(),
        s.switches_total(),
        d.sim.gw.counters().handshakes
    );
    println!(
        "  packets: client->gateway {} sent / {} delivered, gateway->client {} sent / {} delivered, duplicates delivered: {}",
        d.sim.sent_c2g,
        d.sim.gw_delivered.len(),
        d.sim.sent_g2c,
        d.sim.client_delivered.len(),
        if no_duplicates(&d.sim.gw_delivered) && no_duplicates(&d.sim.client_delivered) { "none" } else { "SOME (bug)" }
    );
    println!("  (packets sent into the dead path in step 5 are the ones lost: the protocol never resends data)");
}
