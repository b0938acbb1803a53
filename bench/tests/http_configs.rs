//! The HTTP benchmark compares like with like only if each configuration does what it claims:
//! this builds its bed (Ward's debug binaries, nginx) and checks every configuration the way a
//! run does before measuring it: the benchmark's request is answered under all three, and
//! another request is reset under HTTP rules only.

use ward_bench::http::{Bed, Config};
use ward_lab::NodeConfig;

#[test]
fn every_http_bench_configuration_passes_the_benchmark_request_and_only_http_rules_refuse_another() {
    if !ward_lab::require_root(
        "every_http_bench_configuration_passes_the_benchmark_request_and_only_http_rules_refuse_another",
    ) {
        return;
    }
    let mut bed = Bed::start(NodeConfig::default()).unwrap_or_else(|e| panic!("building the bed: {e:#}"));
    for pass in 0..2 {
        for config in Config::ALL {
            bed.set(config).unwrap_or_else(|e| panic!("pass {pass}: setting {}: {e:#}", config.name()));
            bed.check(config).unwrap_or_else(|e| panic!("pass {pass}: {e:#}"));
        }
    }
    assert_eq!(bed.request("/admin").unwrap_or_else(|e| panic!("{e:#}")), None, "the last configuration is HTTP rules");
}
