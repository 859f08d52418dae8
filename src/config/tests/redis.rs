//! `[redis]`, `[fleet]` and Redis sinks.

use super::*;

/// MINIMAL's tenant with a Redis sink, after `sections`.
fn with_redis(sections: &str, sink: &str) -> String {
    format!(
        "{sections}\n[[tenant]]\nname = \"contoso\"\ntenant_id = \"contoso.onmicrosoft.com\"\nclient_id = \"00000000-0000-0000-0000-000000000001\"\nclient_secret = {{ env = \"SECRET\" }}\nsinks = [ {sink} ]\n"
    )
}

#[test]
fn redis_and_fleet_sections() {
    let config = parse_ok(&with_redis(
        "[redis]\nurl = \"rediss://cache.example.com:6380\"\nusername = \"tokend\"\npassword = { file = \"redis.pass\" }\ncommand_timeout = \"1s\"\n\n[fleet]\nenabled = true\n",
        "{ type = \"redis\" }, { type = \"redis\", key = \"raw/{name}\", format = \"raw\" }",
    ));
    let redis = config.redis.unwrap();
    assert_eq!(redis.urls, vec!["rediss://cache.example.com:6380"]);
    assert_eq!(redis.username.as_deref(), Some("tokend"));
    assert_eq!(
        redis.password,
        Some(SecretSource::File(PathBuf::from(
            "/etc/powerbi-tokend/redis.pass"
        )))
    );
    assert_eq!(redis.command_timeout, Duration::from_secs(1));
    assert_eq!(redis.channel, DEFAULT_REDIS_CHANNEL);
    let fleet = config.fleet.unwrap();
    assert_eq!(fleet.key_prefix, DEFAULT_FLEET_PREFIX);
    assert_eq!(fleet.lease_ttl, Duration::from_secs(45));
    assert_eq!(
        config.tenants[0].sinks,
        vec![
            SinkConfig::Redis(RedisSinkConfig {
                key: "powerbi-tokend:{contoso}".to_owned(),
                format: FileFormat::Json,
            }),
            SinkConfig::Redis(RedisSinkConfig {
                key: "raw/{contoso}".to_owned(),
                format: FileFormat::Raw,
            }),
        ]
    );
    // A cluster from several seed nodes; fleet off unless enabled.
    let config = parse_ok(&with_redis(
        "[redis]\nurl = [\"redis://10.0.0.1:7000\", \"redis://10.0.0.2:7000\"]\ncluster = true\n\n[fleet]\nenabled = false\n",
        "{ type = \"redis\" }",
    ));
    assert!(config.redis.unwrap().cluster);
    assert!(config.fleet.is_none());
}

#[test]
fn redis_mistakes_are_named() {
    let cases: &[(&str, &str, &str)] = &[
        (
            "[redis]\nurl = \"redis://:hunter2@cache:6379\"\n",
            "{ type = \"redis\" }",
            "redis.url: the URL carries credentials",
        ),
        (
            "[redis]\nurl = \"redis://cache:6379\"\npassword = \"hunter2\"\n",
            "{ type = \"redis\" }",
            "redis.password: secrets are not written in the config file",
        ),
        (
            "[redis]\nurl = [\"redis://a:1\", \"redis://b:2\"]\n",
            "{ type = \"redis\" }",
            "set cluster = true",
        ),
        (
            "",
            "{ type = \"redis\" }",
            "a redis sink needs a [redis] section",
        ),
        (
            "[fleet]\nenabled = true\n",
            "{ type = \"file\", path = \"/tmp/{name}.json\" }",
            "fleet.enabled: fleet mode shares leases and tokens through Redis; add a [redis] section",
        ),
        (
            "[redis]\nurl = \"redis://cache\"\n[fleet]\nenabled = true\nlease_ttl = \"10s\"\n",
            "{ type = \"redis\" }",
            "fleet.lease_ttl: must be longer than [daemon] request_timeout (30s)",
        ),
        (
            "[redis]\nurl = \"redis://cache\"\n",
            "{ type = \"redis\", key = \"shared\" }",
            "must contain {name} once",
        ),
        (
            "[redis]\nurl = \"redis://cache\"\n",
            "{ type = \"redis\" }, { type = \"redis\" }",
            "two sinks write the Redis key powerbi-tokend:{contoso}",
        ),
        (
            "[redis]\nurl = \"redis://cache\"\ntimeout = \"1s\"\n",
            "{ type = \"redis\" }",
            "unknown field `timeout`",
        ),
    ];
    for (sections, sink, expected) in cases {
        let text = with_redis(sections, sink);
        let err = parse_err(&text).to_string();
        assert!(
            err.contains(expected),
            "{expected:?} not in:\n{err}\nfor:\n{text}"
        );
        assert!(!err.contains("hunter2"), "{err}");
    }
}
