use super::*;
use axum::http::HeaderValue;
use prometheus::Opts;

fn failures() -> IntCounterVec {
    IntCounterVec::new(Opts::new("failures", "test"), &["reason"]).unwrap()
}

fn config(password: &str) -> BasicAuthConfig {
    BasicAuthConfig {
        users: [("prometheus".to_owned(), bcrypt::hash(password, 4).unwrap())].into(),
        healthz_open: false,
    }
}

fn headers(values: &[&[u8]]) -> HeaderMap {
    let mut headers = HeaderMap::new();
    for value in values {
        headers.append(
            header::AUTHORIZATION,
            HeaderValue::from_bytes(value).unwrap(),
        );
    }
    headers
}

fn basic(user_password: &[u8]) -> Vec<u8> {
    let mut value = b"Basic ".to_vec();
    value.extend(
        base64::engine::general_purpose::STANDARD
            .encode(user_password)
            .bytes(),
    );
    value
}

#[test]
fn credentials_are_read_from_one_basic_header() {
    let (user, password) = credentials(&headers(&[&basic(b"prometheus:pa:ss")])).unwrap();
    assert_eq!(user, b"prometheus");
    assert_eq!(password.expose_secret(), b"pa:ss");
    let (user, password) = credentials(&headers(&[&basic(b"\xff\xfe:\xff")])).unwrap();
    assert_eq!(
        (user.as_slice(), password.expose_secret()),
        (&b"\xff\xfe"[..], &b"\xff"[..])
    );
    let lower = [b"basic ".as_slice(), &basic(b"a:b")[6..]].concat();
    assert!(
        credentials(&headers(&[&lower])).is_ok(),
        "the scheme is case-insensitive"
    );

    assert_eq!(credentials(&HeaderMap::new()).err(), Some(Refusal::Missing));
    let long = basic(&vec![b'a'; 2000]);
    for hostile in [
        &b"Basic"[..],
        b"Basic ",
        b"Bearer abc",
        b"Basic !!!not-base64",
        &basic(b"no colon"),
        &long,
        b"Basic \xff\xfe",
    ] {
        assert_eq!(
            credentials(&headers(&[hostile])).err(),
            Some(Refusal::Malformed),
            "{}",
            String::from_utf8_lossy(hostile)
        );
    }
    let two = headers(&[&basic(b"a:b"), &basic(b"a:b")]);
    assert_eq!(credentials(&two).err(), Some(Refusal::Malformed));
}

#[tokio::test]
async fn the_right_password_passes_and_is_remembered_and_others_do_not() {
    let counter = failures();
    let guard = Guard::new(Some(&config("right")), counter.clone()).unwrap();
    let users = || guard.users().unwrap();
    let secret = |text: &str| SecretSlice::from(text.as_bytes().to_vec());
    assert!(guard.verify(users(), b"prometheus", secret("right")).await);
    assert_eq!(guard.remembered().len(), 1);
    assert!(!guard.verify(users(), b"prometheus", secret("wrong")).await);
    assert!(!guard.verify(users(), b"nobody", secret("right")).await);
    assert!(!guard.verify(users(), b"Prometheus", secret("right")).await);
    assert_eq!(guard.remembered().len(), 1, "failures are not remembered");
    // A remembered verification needs no bcrypt: it passes with every permit taken.
    let _held = guard
        .verifying
        .acquire_many(MAX_VERIFYING as u32)
        .await
        .unwrap();
    let quick = tokio::time::timeout(
        Duration::from_secs(1),
        guard.verify(users(), b"prometheus", secret("right")),
    );
    assert!(quick.await.unwrap());
    drop(_held);
    // The tag binds the stored hash: a new password (a reload) misses the old entry.
    guard.set(Some(&config("other")));
    assert!(!guard.verify(users(), b"prometheus", secret("right")).await);
    assert!(guard.verify(users(), b"prometheus", secret("other")).await);
    // The decoy has the users' cost.
    assert!(
        users().decoy().starts_with("$2b$04$"),
        "{}",
        users().decoy()
    );
    guard.set(None);
    assert!(guard.users().is_none());
}

#[test]
fn the_cache_stays_bounded() {
    let guard = Guard::new(None, failures()).unwrap();
    for i in 0..(MAX_REMEMBERED * 3) {
        guard.remember(guard.tag(b"u", "h", i.to_string().as_bytes()));
    }
    assert!(guard.remembered().len() <= MAX_REMEMBERED);
    assert!(guard.remembers(&guard.tag(
        b"u",
        "h",
        (MAX_REMEMBERED * 3 - 1).to_string().as_bytes()
    )));
    assert!(!guard.remembers(&guard.tag(b"u", "h2", b"0")));
}

#[tokio::test]
async fn htpasswd_and_exporter_toolkit_hashes_verify() {
    // htpasswd -B writes $2y$, other tools $2a$ or $2b$: the same algorithm.
    let hash = bcrypt::hash("right", 4).unwrap();
    for prefix in ["$2a$", "$2b$", "$2y$"] {
        let config = BasicAuthConfig {
            users: [("prometheus".to_owned(), hash.replacen("$2b$", prefix, 1))].into(),
            healthz_open: false,
        };
        let guard = Guard::new(Some(&config), failures()).unwrap();
        let password = SecretSlice::from(b"right".to_vec());
        assert!(
            guard
                .verify(guard.users().unwrap(), b"prometheus", password)
                .await,
            "{prefix}"
        );
    }
}
