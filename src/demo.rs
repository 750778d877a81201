//! The demo page and stream (`examples/web`), served under `/demo/` on the admin listener so a
//! new user sees video play through licensegate with nothing else running. Byte ranges are
//! supported because players fetch single-file DASH segments by range.

use std::path::{Component, Path, PathBuf};

use http::{HeaderMap, Response, StatusCode, header};

pub const PREFIX: &str = "/demo/";

/// The answer to `GET /demo/...`, or `None` for a path outside the demo root.
pub fn serve(root: &Path, path: &str, headers: &HeaderMap) -> Option<Response<Vec<u8>>> {
    let relative = path.strip_prefix(PREFIX)?;
    let file = resolve(root, relative)?;
    let body = std::fs::read(&file).ok()?;
    let response = Response::builder()
        .header(header::CONTENT_TYPE, content_type(&file))
        .header(header::ACCEPT_RANGES, "bytes")
        .header(header::CACHE_CONTROL, "no-cache");
    let Some(range) = headers.get(header::RANGE).and_then(|v| v.to_str().ok()) else {
        return response.status(StatusCode::OK).body(body).ok();
    };
    match byte_range(range, body.len()) {
        Some((start, end)) => response
            .status(StatusCode::PARTIAL_CONTENT)
            .header(
                header::CONTENT_RANGE,
                format!("bytes {start}-{end}/{}", body.len()),
            )
            .body(body[start..=end].to_vec())
            .ok(),
        None => response
            .status(StatusCode::RANGE_NOT_SATISFIABLE)
            .header(header::CONTENT_RANGE, format!("bytes */{}", body.len()))
            .body(Vec::new())
            .ok(),
    }
}

/// The file for a URL path below the root; `..`, absolute paths and the like never escape.
fn resolve(root: &Path, relative: &str) -> Option<PathBuf> {
    let relative = if relative.is_empty() {
        "index.html"
    } else {
        relative
    };
    let mut file = root.to_path_buf();
    for component in Path::new(relative).components() {
        match component {
            Component::Normal(part) => file.push(part),
            _ => return None,
        }
    }
    file.is_file().then_some(file)
}

/// One `bytes=` range, inclusive, clamped to the file; `None` when it cannot be satisfied.
fn byte_range(header: &str, len: usize) -> Option<(usize, usize)> {
    let spec = header.strip_prefix("bytes=")?;
    if spec.contains(',') || len == 0 {
        return None;
    }
    let (start, end) = spec.split_once('-')?;
    let (start, end) = match (start.trim(), end.trim()) {
        ("", suffix) => {
            let suffix: usize = suffix.parse().ok()?;
            (len.checked_sub(suffix.min(len))?, len - 1)
        }
        (start, "") => (start.parse().ok()?, len - 1),
        (start, end) => (start.parse().ok()?, end.parse::<usize>().ok()?.min(len - 1)),
    };
    (start <= end && start < len).then_some((start, end))
}

fn content_type(file: &Path) -> &'static str {
    match file.extension().and_then(|e| e.to_str()) {
        Some("html") => "text/html; charset=utf-8",
        Some("js") => "text/javascript; charset=utf-8",
        Some("css") => "text/css; charset=utf-8",
        Some("json") => "application/json",
        Some("mpd") => "application/dash+xml",
        Some("mp4") => "video/mp4",
        _ => "application/octet-stream",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges() {
        assert_eq!(byte_range("bytes=0-1572", 68092), Some((0, 1572)));
        assert_eq!(byte_range("bytes=1573-", 68092), Some((1573, 68091)));
        assert_eq!(byte_range("bytes=-100", 68092), Some((67992, 68091)));
        assert_eq!(byte_range("bytes=0-999999", 100), Some((0, 99)));
        assert_eq!(byte_range("bytes=200-300", 100), None);
        assert_eq!(byte_range("bytes=5-1", 100), None);
        assert_eq!(byte_range("bytes=0-1,5-6", 100), None);
        assert_eq!(byte_range("items=0-1", 100), None);
    }

    #[test]
    fn paths_stay_inside_the_root() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/web");
        assert!(resolve(&root, "").unwrap().ends_with("index.html"));
        assert!(resolve(&root, "media/manifest.mpd").is_some());
        assert!(resolve(&root, "../../Cargo.toml").is_none());
        assert!(resolve(&root, "media/../../../Cargo.toml").is_none());
        assert!(resolve(&root, "/etc/passwd").is_none());
        assert!(resolve(&root, "missing.html").is_none());
    }

    #[test]
    fn partial_content_carries_its_range() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/web");
        let mut headers = HeaderMap::new();
        headers.insert(header::RANGE, "bytes=0-7".parse().unwrap());
        let response = serve(&root, "/demo/media/video_cenc.mp4", &headers).unwrap();
        assert_eq!(response.status(), 206);
        assert_eq!(response.body().len(), 8);
        assert_eq!(&response.body()[4..8], b"ftyp");
        assert_eq!(response.headers()[header::CONTENT_RANGE], "bytes 0-7/68092");
    }
}
