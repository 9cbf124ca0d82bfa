use super::*;
use std::sync::atomic::{AtomicUsize, Ordering};

/// A source whose answers the test scripts.
struct Scripted {
    answer: Mutex<Result<String, SourceError>>,
    calls: AtomicUsize,
    /// How long each fetch takes before answering (a hung backend).
    hang: Mutex<Duration>,
}

#[async_trait::async_trait]
impl SecretSource for Scripted {
    async fn fetch(&self, _: &str) -> Result<ProjectSecret, SourceError> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        let hang = self.hang.lock().map(|h| *h).unwrap_or_default();
        tokio::time::sleep(hang).await;
        let a = self
            .answer
            .lock()
            .map(|a| a.clone())
            .unwrap_or(Err(SourceError::NotFound));
        a.and_then(|k| {
            checked(
                SecretString::from(k),
                "project_0123456789abcdefghijklmnopqrstuv".into(),
                Some(3),
            )
        })
    }
}

fn cache(ttl_ms: u64, stale_ms: u64) -> (Arc<Scripted>, SecretCache) {
    let src = Arc::new(Scripted {
        answer: Mutex::new(Ok("rk_one".into())),
        calls: AtomicUsize::new(0),
        hang: Mutex::new(Duration::ZERO),
    });
    let c = SecretCache::with_metrics(
        src.clone(),
        Duration::from_millis(ttl_ms),
        Duration::from_millis(stale_ms),
        FETCH_TIMEOUT,
        None,
    );
    (src, c)
}

/// The fetch timeout of these tests (Vault's request_timeout_ms).
const FETCH_TIMEOUT: Duration = Duration::from_millis(400);

fn hang(src: &Scripted, d: Duration) {
    if let Ok(mut h) = src.hang.lock() {
        *h = d;
    }
}

/// Five callers at once of a secret past its TTL, the backend hung: each
/// waited 1, 2, 3, 4 and 5 timeouts, one fetch after another. Now one
/// fetch runs, the others get the stale copy at once, and nobody waits
/// longer than one timeout.
#[tokio::test]
async fn a_hung_source_costs_one_timeout_and_only_one_caller_pays_it() {
    let (src, c) = cache(50, 60_000);
    assert!(c.get("p").await.is_ok());
    hang(&src, Duration::from_secs(30));
    tokio::time::sleep(Duration::from_millis(80)).await;
    let calls = (0..5)
        .map(|_| {
            let c = c.clone();
            tokio::spawn(async move {
                let started = Instant::now();
                let got = c.get("p").await.map(|r| r.1);
                (got.ok(), started.elapsed())
            })
        })
        .collect::<Vec<_>>();
    let mut waited = vec![];
    for h in calls {
        let (got, took) = h.await.unwrap();
        assert_eq!(got, Some(Freshness::Stale));
        waited.push(took);
    }
    waited.sort();
    assert!(waited[4] < FETCH_TIMEOUT * 2, "{waited:?}");
    assert!(
        waited[3] < FETCH_TIMEOUT / 2,
        "only one caller waits: {waited:?}"
    );
    assert_eq!(src.calls.load(Ordering::SeqCst), 2, "warm-up + one fetch");
    // Just failed: the next callers are not made to wait again either.
    let started = Instant::now();
    assert_eq!(c.get("p").await.map(|r| r.1).ok(), Some(Freshness::Stale));
    assert!(started.elapsed() < FETCH_TIMEOUT / 2);
    assert_eq!(src.calls.load(Ordering::SeqCst), 2);
}

/// A backend refusing connections: 20 requests with a stale copy were 20
/// failed reads. Failures now back off.
#[tokio::test]
async fn a_failing_source_backs_off_instead_of_being_asked_per_request() {
    let (src, c) = cache(20, 60_000);
    assert!(c.get("p").await.is_ok());
    set(&src, Err(SourceError::Unavailable("refused".into())));
    tokio::time::sleep(Duration::from_millis(40)).await;
    for _ in 0..20 {
        assert_eq!(c.get("p").await.map(|r| r.1).ok(), Some(Freshness::Stale));
    }
    assert_eq!(
        src.calls.load(Ordering::SeqCst),
        2,
        "warm-up + one failed fetch"
    );
    // The backoff ends and the source is asked again; once it answers,
    // the secret is fresh.
    set(&src, Ok("rk_two"));
    let started = Instant::now();
    loop {
        let (s, f) = c.get("p").await.unwrap();
        if f == Freshness::Fresh {
            use secrecy::ExposeSecret;
            assert_eq!(s.rest_key.expose_secret(), "rk_two");
            break;
        }
        assert!(started.elapsed() < BACKOFF_MAX * 2, "never asked again");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Without a usable copy, concurrent callers share one fetch's failure
/// (each bounded by one timeout) and later ones are refused at once until
/// the backoff ends.
#[tokio::test]
async fn callers_without_a_copy_share_one_failed_fetch() {
    let (src, c) = cache(50, 0);
    hang(&src, Duration::from_secs(30));
    let calls = (0..5)
        .map(|_| {
            let c = c.clone();
            tokio::spawn(async move {
                let started = Instant::now();
                (c.get("p").await.is_err(), started.elapsed())
            })
        })
        .collect::<Vec<_>>();
    for h in calls {
        let (failed, took) = h.await.unwrap();
        assert!(failed);
        assert!(took < FETCH_TIMEOUT * 2, "{took:?}");
    }
    assert_eq!(src.calls.load(Ordering::SeqCst), 1);
    let started = Instant::now();
    assert!(c.get("p").await.is_err());
    assert!(started.elapsed() < FETCH_TIMEOUT / 2);
    assert_eq!(src.calls.load(Ordering::SeqCst), 1);
}

fn set(src: &Scripted, a: Result<&str, SourceError>) {
    if let Ok(mut g) = src.answer.lock() {
        *g = a.map(str::to_string);
    }
}

#[tokio::test]
async fn fresh_then_cached_within_the_ttl_without_asking_again() {
    let (src, c) = cache(60_000, 0);
    assert_eq!(c.get("p").await.map(|r| r.1).ok(), Some(Freshness::Fresh));
    assert_eq!(c.get("p").await.map(|r| r.1).ok(), Some(Freshness::Cached));
    assert_eq!(src.calls.load(Ordering::SeqCst), 1);
    assert_eq!(c.get("p").await.map(|r| r.0.version).ok(), Some(Some(3)));
}

#[tokio::test]
async fn an_outage_is_bridged_for_the_stale_bound_only() {
    let (src, c) = cache(50, 200);
    assert!(c.get("p").await.is_ok());
    set(&src, Err(SourceError::Unavailable("down".into())));
    tokio::time::sleep(Duration::from_millis(80)).await;
    assert_eq!(c.get("p").await.map(|r| r.1).ok(), Some(Freshness::Stale));
    assert_eq!(c.state("p").await, SecretState::Stale);
    tokio::time::sleep(Duration::from_millis(250)).await;
    assert!(matches!(c.get("p").await, Err(SourceError::Unavailable(_))));
    assert_eq!(c.state("p").await, SecretState::Unavailable);
}

#[tokio::test]
async fn a_secret_the_source_revokes_is_evicted_at_once() {
    let (src, c) = cache(50, 60_000);
    assert!(c.get("p").await.is_ok());
    set(&src, Err(SourceError::NotFound));
    tokio::time::sleep(Duration::from_millis(80)).await;
    assert!(matches!(c.get("p").await, Err(SourceError::NotFound)));
    // Even when the source then fails, the revoked value is gone.
    set(&src, Err(SourceError::Unavailable("down".into())));
    assert!(c.get("p").await.is_err());
    assert!(!c.usable("p").await);
}

#[test]
fn unusable_answers_are_refused() {
    assert!(
        checked(
            SecretString::from(""),
            "project_0123456789abcdefghijklmnopqrstuv".into(),
            None
        )
        .is_err()
    );
    assert!(
        checked(
            SecretString::from("a b"),
            "project_0123456789abcdefghijklmnopqrstuv".into(),
            None
        )
        .is_err()
    );
    assert!(
        checked(
            SecretString::from("rk"),
            "project_X123456789abcdefghijklmnopqrstuv".into(),
            None
        )
        .is_err()
    );
    assert!(!is_project_key("project_0123"));
}

#[test]
fn a_broken_secrets_file_error_never_quotes_its_content() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("s.toml");
    let _ = std::fs::write(
        &p,
        "[\"batch/x\"]\nrest_key = \"rk_supersecret\nproject_key = 1\n",
    );
    let msg = FileSource::read_file(&p)
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(msg.contains("not a valid secrets file"), "{msg}");
    assert!(!msg.contains("supersecret"), "{msg}");
}

/// In the last fifth of the TTL each hit started a background refresh;
/// against a failing source that was one failed read per request. The
/// refresh now waits out the backoff too.
#[tokio::test]
async fn background_refreshes_back_off_from_a_failing_source() {
    let (src, c) = cache(1_000, 60_000);
    assert!(c.get("p").await.is_ok());
    set(&src, Err(SourceError::Unavailable("refused".into())));
    tokio::time::sleep(Duration::from_millis(850)).await;
    for _ in 0..20 {
        assert_eq!(c.get("p").await.map(|r| r.1).ok(), Some(Freshness::Cached));
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let calls = src.calls.load(Ordering::SeqCst);
    assert!(
        calls <= 3,
        "warm-up + one failed refresh (two if the backoff ran out), not {calls}"
    );
}
