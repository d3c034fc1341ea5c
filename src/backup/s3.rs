//! An S3-compatible object store as a backup [`Target`].
//!
//! - Write once: objects up to [`PART_SIZE`] (every manifest, marker and
//!   lease) are one PUT with `If-None-Match: *`, so the store itself
//!   refuses to replace an object. Larger objects (big bodies, long
//!   segments) go up in parts after a HEAD found the name free; both kinds
//!   are named by what they hold (a body by its blake3, a segment by origin
//!   and seq range of a hash chain), so a race can only store the same
//!   bytes again.
//! - Durable before acknowledged: [`Target::put_new`] returns only after
//!   the store answered the PUT (or the multipart completion) with
//!   success; [`Target::sync`] has nothing left to do.
//! - Transient failures (connection refused or reset, time-outs, 5xx) are
//!   retried per request, [`ATTEMPTS`] times with doubling pauses; a
//!   missing object, a refused precondition or a permission error is not.
//! - The writer needs `s3:PutObject`, `s3:GetObject` and `s3:ListBucket`
//!   only; [`Target::delete`] (prune) needs `s3:DeleteObject`, which the
//!   prune job's own credentials carry.
//!
//! Credentials come from a file (`access_key_id`, `secret_access_key`,
//! optional `session_token`, TOML) or the environment (`AWS_ACCESS_KEY_ID`,
//! `AWS_SECRET_ACCESS_KEY`, `AWS_SESSION_TOKEN`); they are never logged or
//! shown by [`Target::describe`].

use super::target::Target;
use futures::StreamExt;
use object_store::aws::{AmazonS3, AmazonS3Builder, S3ConditionalPut};
use object_store::path::Path as ObjPath;
use object_store::{ClientOptions, GetOptions, GetRange, ObjectStore, PutMode, PutOptions, PutPayload, RetryConfig};
use std::future::Future;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// Objects larger than this are uploaded in parts of this size.
pub const PART_SIZE: usize = 8 << 20;
/// Tries per request before a failure is reported.
pub const ATTEMPTS: u32 = 8;

/// Where an S3 target is and how to reach it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct S3Settings {
    /// `http(s)://host:port` of an S3-compatible service (unset: AWS, or
    /// `AWS_ENDPOINT_URL` from the environment).
    pub endpoint: Option<String>,
    /// Signing region (unset: `AWS_REGION`, else `us-east-1`).
    pub region: Option<String>,
    /// File holding the credentials (unset: the environment).
    pub credentials_file: Option<PathBuf>,
}

/// `s3://bucket/prefix` split up. The prefix may be empty.
pub fn parse_url(url: &str) -> Option<(String, String)> {
    let rest = url.strip_prefix("s3://")?;
    let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
    let prefix = prefix.trim_matches('/');
    let bucket_ok = (3..=63).contains(&bucket.len())
        && bucket
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.');
    let prefix_ok = prefix
        .split('/')
        .all(|p| prefix.is_empty() || (!p.is_empty() && p != "." && p != ".."));
    (bucket_ok && prefix_ok).then(|| (bucket.to_string(), prefix.to_string()))
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct CredentialsFile {
    access_key_id: String,
    secret_access_key: String,
    session_token: Option<String>,
}

fn read_credentials(path: &Path) -> io::Result<CredentialsFile> {
    let text = std::fs::read_to_string(path).map_err(|e| io::Error::new(e.kind(), format!("reading {}: {e}", path.display())))?;
    // The parse error is not shown: it could quote a secret.
    toml::from_str(&text).map_err(|_| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!(
                "{}: expected `access_key_id = \"…\"` and `secret_access_key = \"…\"` (and optionally `session_token`)",
                path.display()
            ),
        )
    })
}

/// An S3 bucket (below a prefix) as a write-once [`Target`].
pub struct S3Target {
    store: Arc<AmazonS3>,
    prefix: String,
    url: String,
    endpoint: String,
    rt: Option<tokio::runtime::Runtime>,
    retries: Arc<AtomicU64>,
}

impl Drop for S3Target {
    fn drop(&mut self) {
        // Safe inside or outside an async context.
        if let Some(rt) = self.rt.take() {
            rt.shutdown_background();
        }
    }
}

fn to_io(e: object_store::Error) -> io::Error {
    use object_store::Error as E;
    let kind = match &e {
        E::NotFound { .. } => io::ErrorKind::NotFound,
        E::AlreadyExists { .. } => io::ErrorKind::AlreadyExists,
        E::PermissionDenied { .. } | E::Unauthenticated { .. } => io::ErrorKind::PermissionDenied,
        E::Precondition { .. } | E::NotModified { .. } => io::ErrorKind::InvalidInput,
        E::NotSupported { .. } | E::NotImplemented | E::InvalidPath { .. } => io::ErrorKind::Unsupported,
        _ => io::ErrorKind::Other,
    };
    io::Error::new(kind, e.to_string())
}

/// Whether a failure may pass when tried again.
fn transient(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::Other | io::ErrorKind::TimedOut | io::ErrorKind::Interrupted
    )
}

impl S3Target {
    /// A target for `url` (`s3://bucket/prefix`). Nothing is contacted yet.
    pub fn new(url: &str, s: &S3Settings) -> io::Result<S3Target> {
        let (bucket, prefix) =
            parse_url(url).ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, format!("{url:?} is not s3://BUCKET[/PREFIX]")))?;
        let mut b = AmazonS3Builder::from_env()
            .with_bucket_name(&bucket)
            .with_conditional_put(S3ConditionalPut::ETagMatch)
            // Retries are ours (counted, and bounded per request).
            .with_retry(RetryConfig {
                max_retries: 0,
                ..RetryConfig::default()
            })
            .with_client_options(
                ClientOptions::new()
                    .with_connect_timeout(Duration::from_secs(5))
                    .with_timeout(Duration::from_secs(120)),
            );
        if std::env::var_os("AWS_REGION").is_none() && std::env::var_os("AWS_DEFAULT_REGION").is_none() {
            b = b.with_region("us-east-1");
        }
        if let Some(r) = &s.region {
            b = b.with_region(r);
        }
        let endpoint = s.endpoint.clone().or_else(|| std::env::var("AWS_ENDPOINT_URL").ok());
        if let Some(e) = &endpoint {
            // Path-style requests: most S3-compatible services want them.
            b = b
                .with_endpoint(e)
                .with_virtual_hosted_style_request(false)
                .with_allow_http(e.starts_with("http://"));
        }
        if let Some(f) = &s.credentials_file {
            let c = read_credentials(f)?;
            b = b.with_access_key_id(c.access_key_id).with_secret_access_key(c.secret_access_key);
            if let Some(t) = c.session_token {
                b = b.with_token(t);
            }
        }
        let store = b
            .build()
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, format!("S3 target {url}: {e}")))?;
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("tandem-s3")
            .enable_all()
            .build()?;
        Ok(S3Target {
            store: Arc::new(store),
            prefix,
            url: format!("s3://{}", url.trim_start_matches("s3://").trim_end_matches('/')),
            endpoint: endpoint.unwrap_or_else(|| "aws".into()),
            rt: Some(rt),
            retries: Arc::new(AtomicU64::new(0)),
        })
    }

    /// Requests that failed and were tried again so far.
    pub fn retries(&self) -> u64 {
        self.retries.load(Ordering::Relaxed)
    }

    fn path(&self, name: &str) -> io::Result<ObjPath> {
        super::target::check_name(name)?;
        let full = if self.prefix.is_empty() {
            name.to_string()
        } else {
            format!("{}/{name}", self.prefix)
        };
        ObjPath::parse(&full).map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e.to_string()))
    }

    /// Run `f` on the target's runtime and wait for it (callable from any
    /// thread that is not a runtime worker).
    fn block<T: Send + 'static>(&self, f: impl Future<Output = T> + Send + 'static) -> io::Result<T> {
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        self.rt.as_ref().expect("runtime lives until drop").spawn(async move {
            let _ = tx.send(f.await);
        });
        rx.recv().map_err(|_| io::Error::other("S3 request task ended"))
    }

    /// One request, retried while its failure is transient.
    fn request<T, F, Fut>(&self, what: &str, mut f: F) -> io::Result<T>
    where
        T: Send + 'static,
        F: FnMut(Arc<AmazonS3>) -> Fut,
        Fut: Future<Output = Result<T, object_store::Error>> + Send + 'static,
    {
        let mut attempt = 0;
        loop {
            let r = self.block(f(self.store.clone()))?.map_err(to_io);
            match r {
                Err(e) if transient(&e) && attempt + 1 < ATTEMPTS => {
                    self.retries.fetch_add(1, Ordering::Relaxed);
                    tracing::debug!(target = %self.url, request = what, attempt, error = %e, "S3 request failed; retrying");
                    std::thread::sleep(Duration::from_millis((100u64 << attempt).min(3_200)));
                    attempt += 1;
                }
                Err(e) => return Err(io::Error::new(e.kind(), format!("{what}: {e}"))),
                Ok(v) => return Ok(v),
            }
        }
    }

    fn get_all(&self, path: &ObjPath) -> io::Result<Vec<u8>> {
        let p = path.clone();
        self.request("GET", move |s| {
            let p = p.clone();
            async move { s.get(&p).await?.bytes().await.map(|b| b.to_vec()) }
        })
    }
}

/// Collects an object's bytes; past [`PART_SIZE`] it uploads them in parts.
struct Upload<'a> {
    t: &'a S3Target,
    path: ObjPath,
    buf: Vec<u8>,
    multi: Option<(object_store::MultipartId, Vec<object_store::multipart::PartId>)>,
}

impl Upload<'_> {
    fn flush_part(&mut self) -> io::Result<()> {
        use object_store::multipart::MultipartStore;
        if self.multi.is_none() {
            let p = self.path.clone();
            let id = self.t.request("create multipart upload", move |s| {
                let p = p.clone();
                async move { s.create_multipart(&p).await }
            })?;
            self.multi = Some((id, Vec::new()));
        }
        let (id, parts) = self.multi.as_mut().expect("created above");
        let data = bytes::Bytes::from(std::mem::take(&mut self.buf));
        let (p, idx, id2) = (self.path.clone(), parts.len(), id.clone());
        let part = self.t.request("upload part", move |s| {
            let (p, id2, data) = (p.clone(), id2.clone(), data.clone());
            async move { s.put_part(&p, &id2, idx, PutPayload::from(data)).await }
        })?;
        parts.push(part);
        Ok(())
    }
}

impl Write for Upload<'_> {
    fn write(&mut self, b: &[u8]) -> io::Result<usize> {
        self.buf.extend_from_slice(b);
        if self.buf.len() >= PART_SIZE {
            self.flush_part()?;
        }
        Ok(b.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Pulls a GET's body from the runtime one chunk at a time.
struct S3Reader {
    rt: tokio::runtime::Handle,
    stream: Option<futures::stream::BoxStream<'static, object_store::Result<bytes::Bytes>>>,
    chunk: bytes::Bytes,
}

impl Read for S3Reader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.chunk.is_empty() {
            let Some(mut s) = self.stream.take() else { return Ok(0) };
            let (tx, rx) = std::sync::mpsc::sync_channel(1);
            self.rt.spawn(async move {
                let next = s.next().await;
                let _ = tx.send((s, next));
            });
            let (s, next) = rx.recv().map_err(|_| io::Error::other("S3 read task ended"))?;
            match next {
                None => return Ok(0),
                Some(Ok(c)) => {
                    self.chunk = c;
                    self.stream = Some(s);
                }
                Some(Err(e)) => return Err(to_io(e)),
            }
        }
        let n = buf.len().min(self.chunk.len());
        buf[..n].copy_from_slice(&self.chunk.split_to(n));
        Ok(n)
    }
}

impl Target for S3Target {
    fn put_new(&self, name: &str, write: &mut dyn FnMut(&mut dyn Write) -> io::Result<()>) -> io::Result<bool> {
        use object_store::multipart::MultipartStore;
        let path = self.path(name)?;
        let mut up = Upload {
            t: self,
            path: path.clone(),
            buf: Vec::new(),
            multi: None,
        };
        if let Err(e) = write(&mut up) {
            if let Some((id, _)) = up.multi.take() {
                let (p, s) = (path.clone(), self.store.clone());
                let _ = self.block(async move { s.abort_multipart(&p, &id).await });
            }
            return Err(e);
        }
        match up.multi.take() {
            None => {
                let data = bytes::Bytes::from(std::mem::take(&mut up.buf));
                let (p, d) = (path.clone(), data.clone());
                let r = self.request("PUT", move |s| {
                    let (p, d) = (p.clone(), d.clone());
                    async move {
                        s.put_opts(
                            &p,
                            PutPayload::from(d),
                            PutOptions {
                                mode: PutMode::Create,
                                ..PutOptions::default()
                            },
                        )
                        .await
                    }
                });
                match r {
                    Ok(_) => Ok(true),
                    // Taken: by an earlier try of this very PUT whose answer
                    // was lost (same bytes: it is written), or by another.
                    Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(self.get_all(&path)? == data[..]),
                    Err(e) => Err(e),
                }
            }
            Some((id, mut parts)) => {
                if !up.buf.is_empty() {
                    up.multi = Some((id.clone(), std::mem::take(&mut parts)));
                    up.flush_part()?;
                    parts = up.multi.take().expect("kept above").1;
                }
                // Parts cannot be completed on condition: look first
                // whether the name was taken meanwhile.
                if self.exists(name)? {
                    let (p, s) = (path.clone(), self.store.clone());
                    let _ = self.block(async move { s.abort_multipart(&p, &id).await });
                    return Ok(false);
                }
                let (p, id2) = (path.clone(), id.clone());
                self.request("complete multipart upload", move |s| {
                    let (p, id2, parts) = (p.clone(), id2.clone(), parts.clone());
                    async move { s.complete_multipart(&p, &id2, parts).await }
                })?;
                Ok(true)
            }
        }
    }

    fn open(&self, name: &str) -> io::Result<Box<dyn Read + Send>> {
        self.open_at(name, 0)
    }

    fn open_at(&self, name: &str, offset: u64) -> io::Result<Box<dyn Read + Send>> {
        let p = self.path(name)?;
        let stream = self.request("GET", move |s| {
            let p = p.clone();
            async move {
                let opts = GetOptions {
                    range: (offset > 0).then_some(GetRange::Offset(offset)),
                    ..GetOptions::default()
                };
                Ok(s.get_opts(&p, opts).await?.into_stream())
            }
        })?;
        Ok(Box::new(S3Reader {
            rt: self.rt.as_ref().expect("runtime lives until drop").handle().clone(),
            stream: Some(stream),
            chunk: bytes::Bytes::new(),
        }))
    }

    fn read_range(&self, name: &str, offset: u64, len: u64) -> io::Result<Vec<u8>> {
        if len == 0 {
            return Ok(Vec::new());
        }
        let p = self.path(name)?;
        let v = self.request("GET range", move |s| {
            let p = p.clone();
            async move {
                let opts = GetOptions {
                    range: Some(GetRange::Bounded(offset..offset + len)),
                    ..GetOptions::default()
                };
                s.get_opts(&p, opts).await?.bytes().await.map(|b| b.to_vec())
            }
        });
        match v {
            Ok(v) if v.len() as u64 == len => Ok(v),
            Ok(v) => Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!(
                    "the object ends at byte offset {}, before {}",
                    offset + v.len() as u64,
                    offset + len
                ),
            )),
            // A range starting past the end is refused by the store (416).
            Err(e) if e.to_string().contains("Range") || e.to_string().contains("416") => Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!("the object ends before byte offset {}: {e}", offset + len),
            )),
            Err(e) => Err(e),
        }
    }

    fn read_tail(&self, name: &str, max: u64) -> io::Result<(u64, Vec<u8>)> {
        let p = self.path(name)?;
        self.request("GET suffix", move |s| {
            let p = p.clone();
            async move {
                let opts = GetOptions {
                    range: Some(GetRange::Suffix(max.max(1))),
                    ..GetOptions::default()
                };
                let r = s.get_opts(&p, opts).await?;
                let size = r.meta.size;
                Ok((size, r.bytes().await?.to_vec()))
            }
        })
    }

    fn exists(&self, name: &str) -> io::Result<bool> {
        let p = self.path(name)?;
        match self.request("HEAD", move |s| {
            let p = p.clone();
            async move { s.head(&p).await }
        }) {
            Ok(_) => Ok(true),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(e),
        }
    }

    fn list(&self, dir: &str) -> io::Result<Vec<String>> {
        let p = self.path(dir)?;
        let r = self.request("LIST", move |s| {
            let p = p.clone();
            async move { s.list_with_delimiter(Some(&p)).await }
        })?;
        let mut out: Vec<String> = r
            .common_prefixes
            .iter()
            .filter_map(|p| p.filename().map(str::to_string))
            .chain(r.objects.iter().filter_map(|o| o.location.filename().map(str::to_string)))
            .collect();
        out.sort();
        out.dedup();
        Ok(out)
    }

    fn sync(&self) -> io::Result<()> {
        // Every PUT that returned is durable already.
        Ok(())
    }

    fn delete(&self, name: &str) -> io::Result<()> {
        let p = self.path(name)?;
        self.request("DELETE", move |s| {
            let p = p.clone();
            async move { s.delete(&p).await }
        })
    }

    fn describe(&self) -> String {
        format!("{} (at {})", self.url, self.endpoint)
    }

    fn retries(&self) -> u64 {
        S3Target::retries(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        assert_eq!(parse_url("s3://bkt/a/b/"), Some(("bkt".into(), "a/b".into())));
        assert_eq!(parse_url("s3://bkt"), Some(("bkt".into(), "".into())));
        assert_eq!(parse_url("s3://bkt/"), Some(("bkt".into(), "".into())));
        assert_eq!(parse_url("s3://Bad/x"), None);
        assert_eq!(parse_url("s3://bkt/a/../b"), None);
        assert_eq!(parse_url("/srv/backup"), None);
    }

    #[test]
    fn credentials_errors_never_quote_the_file() {
        let d = tempfile::tempdir().unwrap();
        let f = d.path().join("s3.key");
        std::fs::write(&f, "access_key_id = \"AKIA\"\nsecret_access_key = s3cr3t-unquoted\n").unwrap();
        let e = S3Target::new(
            "s3://bkt/p",
            &S3Settings {
                credentials_file: Some(f),
                ..S3Settings::default()
            },
        )
        .err()
        .unwrap()
        .to_string();
        assert!(!e.contains("s3cr3t") && e.contains("secret_access_key"), "{e}");
    }
}
