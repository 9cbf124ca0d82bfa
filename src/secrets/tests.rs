use super::*;
use std::sync::atomic::{AtomicUsize, Ordering};

/// A source whose answers the test scripts.
struct Scripted {
    answer: Mutex<Result<String, SourceError>>,
    calls: AtomicUsize,
}

#[async_trait::async_trait]
impl SecretSource for Scripted {
    async fn fetch(&self, _: &str) -> Result<ProjectSecret, SourceError> {
        self.calls.fetch_add(1, Ordering::SeqCst);
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
    });
    let c = SecretCache::new(
        src.clone(),
        Duration::from_millis(ttl_ms),
        Duration::from_millis(stale_ms),
    );
    (src, c)
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
