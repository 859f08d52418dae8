//! The simulator's table of sovereign clouds against the daemon's.
//!
//! The simulator cannot use the daemon's [`Cloud`]: the daemon's `demo` depends on the simulator,
//! so a dependency back would be a cycle. It keeps its own [`SimCloud`] table instead, and these
//! tests hold the two equal, so that a token the daemon asks for in some cloud is one the
//! simulator issues and its Power BI API and key vault accept.

use powerbi_tokend::cloud::Cloud;
use powerbi_tokend_sim::SimCloud;

/// The simulator's name for a cloud of the daemon. Exhaustive: a cloud the daemon gains does not
/// compile here until the simulator has it too.
fn simulated(cloud: Cloud) -> SimCloud {
    match cloud {
        Cloud::Public => SimCloud::Public,
        Cloud::Gcc => SimCloud::Gcc,
        Cloud::Gcchigh => SimCloud::Gcchigh,
        Cloud::Dod => SimCloud::Dod,
        Cloud::China => SimCloud::China,
    }
}

#[test]
fn every_cloud_is_simulated_once_under_its_own_name() {
    let twins = Cloud::ALL.map(simulated);
    assert_eq!(twins, SimCloud::ALL, "the same clouds in the same order");
    for cloud in Cloud::ALL {
        assert_eq!(format!("{cloud:?}"), format!("{:?}", simulated(cloud)));
    }
    assert_eq!(simulated(Cloud::default()), SimCloud::default());
}

#[test]
fn the_simulator_expects_the_resources_the_daemon_asks_for() {
    for cloud in Cloud::ALL {
        let sim = simulated(cloud);
        assert_eq!(
            sim.power_bi_resource(),
            cloud.power_bi_resource(),
            "{cloud:?}: Power BI"
        );
        assert_eq!(
            sim.key_vault_resource(),
            cloud.key_vault_resource(),
            "{cloud:?}: Key Vault"
        );
        assert_eq!(
            sim.fabric_resource(),
            cloud.fabric_resource(),
            "{cloud:?}: Fabric"
        );
    }
}
