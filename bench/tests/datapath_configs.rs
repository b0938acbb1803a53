//! The datapath bench compares like with like only if each configuration enforces what it
//! claims. This builds the bench's lab for N = 1,000 peers (Ward's debug binaries, real
//! iptables and nftables) and checks every configuration the way a run does before measuring
//! it, plus what a run relies on between configurations: no netfilter hook is left in the
//! node when a configuration without netfilter is in force.

use ward_bench::datapath::configs::Config;
use ward_bench::datapath::topology::Lab;

const N: usize = 1_000;

#[test]
fn every_compared_configuration_allows_the_client_and_only_enforcing_ones_stop_an_intruder() {
    if !ward_lab::require_root(
        "every_compared_configuration_allows_the_client_and_only_enforcing_ones_stop_an_intruder",
    ) {
        return;
    }
    let bins = ward_lab::bins::Binaries::locate().unwrap_or_else(|e| panic!("{e}"));
    let mut lab = Lab::build(&bins, &[N], &|m| eprintln!("{m}")).unwrap_or_else(|e| panic!("building the lab: {e:#}"));
    // Twice round, so switching from every configuration to every next one is covered too.
    for pass in 0..2 {
        for config in Config::round(&[N]) {
            lab.switch(config).unwrap_or_else(|e| panic!("switching to {config}: {e:#}"));
            let check = lab.check(config).unwrap_or_else(|e| panic!("checking {config}: {e:#}"));
            assert!(check.client.is_ok(), "pass {pass}: {config}: the client must get through: {:?}", check.client);
            if config.enforces() {
                assert!(
                    check.intruder.is_err(),
                    "pass {pass}: {config}: the intruder (in no rule) must be stopped, but it connected"
                );
            } else {
                assert!(
                    check.intruder.is_ok(),
                    "pass {pass}: {config}: nothing enforces here, the intruder must connect: {:?}",
                    check.intruder
                );
            }
            assert!(check.holds(config), "{config}: {check:?}");
            let rules = lab.chains().unwrap_or_else(|e| panic!("{e:#}"));
            let hooked = rules.contains("hook forward");
            assert_eq!(
                hooked,
                matches!(config, Config::Iptables(_) | Config::Nft(_)),
                "pass {pass}: {config}: a forward hook exactly for the netfilter configurations:\n{rules}"
            );
        }
    }
}
