//! Images sent with a message: checking them ([`decode`]) and storing them durably in the
//! session's directory ([`store`]) before the message is accepted.
//!
//! A client sends `{"url": "data:<media type>;base64,<data>"}`. The data is decoded and its media
//! type found from its first bytes (PNG, JPEG, GIF, WebP); a declared type that differs is
//! refused. Remote (`https:`) URLs are refused with `remote_image_unsupported`: the sidecar would
//! have to fetch them (or let the model server fetch them from inside the cluster, a
//! server-side request forgery path) and could neither check nor keep what it fetched, so a
//! message could change or vanish between its 202 and its turn.
//!
//! Stored images are files `images/msg_<n>_<i>.<ext>` (mode 0600, fsynced, directory fsynced)
//! named in the message's inbox line; codex gets them as `localImage` input items (see
//! `actor::pending::turn_params`). They stay until the session is deleted (a turn re-sent after a
//! crash needs them).

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use axum::http::StatusCode;
use base64::Engine as _;

use crate::config::Limits;
use crate::error::ApiError;
use crate::store::inbox::ImageRef;

/// A checked, decoded image, not yet stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Image {
    /// `image/png`, `image/jpeg`, `image/gif` or `image/webp` (from the bytes).
    pub media_type: &'static str,
    /// The decoded bytes.
    pub bytes: Vec<u8>,
}

/// The media type and file extension the first bytes of `b` show, if any this API takes.
pub fn sniff(b: &[u8]) -> Option<(&'static str, &'static str)> {
    if b.starts_with(b"\x89PNG\r\n\x1a\n") {
        Some(("image/png", "png"))
    } else if b.starts_with(&[0xff, 0xd8, 0xff]) {
        Some(("image/jpeg", "jpg"))
    } else if b.starts_with(b"GIF87a") || b.starts_with(b"GIF89a") {
        Some(("image/gif", "gif"))
    } else if b.len() >= 12 && &b[..4] == b"RIFF" && &b[8..12] == b"WEBP" {
        Some(("image/webp", "webp"))
    } else {
        None
    }
}

/// The file extension of a media type this API takes.
fn extension(media_type: &str) -> &'static str {
    match media_type {
        "image/png" => "png",
        "image/jpeg" => "jpg",
        "image/gif" => "gif",
        _ => "webp",
    }
}

fn too_large(code: &'static str, message: String) -> ApiError {
    ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, code, message)
}

/// Checks and decodes a message's images (`urls`, in order).
///
/// # Errors
/// 400 `too_many_images` (over `limits.images_per_message`), `remote_image_unsupported`
/// (`http:`/`https:`), `invalid_image_url` (not a base64 `data:` URL), `invalid_image_base64`,
/// `unsupported_image_type` (declared or actual type not PNG/JPEG/GIF/WebP), `image_type_mismatch`
/// (the bytes are another type than declared); 413 `image_too_large` (one image over
/// `limits.image_bytes` decoded), `images_too_large` (all of them over
/// `limits.message_image_bytes`). Each message names the image by its index.
pub fn decode(urls: &[String], limits: &Limits) -> Result<Vec<Image>, ApiError> {
    if urls.len() > limits.images_per_message {
        return Err(ApiError::bad_request(
            "too_many_images",
            format!(
                "{} images; a message carries at most {}",
                urls.len(),
                limits.images_per_message
            ),
        ));
    }
    let mut out = Vec::with_capacity(urls.len());
    let mut total = 0usize;
    for (i, url) in urls.iter().enumerate() {
        let img = decode_one(i, url, limits)?;
        total += img.bytes.len();
        if total > limits.message_image_bytes {
            return Err(too_large(
                "images_too_large",
                format!(
                    "the images add up to more than {} bytes",
                    limits.message_image_bytes
                ),
            ));
        }
        out.push(img);
    }
    Ok(out)
}

fn decode_one(i: usize, url: &str, limits: &Limits) -> Result<Image, ApiError> {
    let lower = url.get(..8).unwrap_or(url).to_ascii_lowercase();
    if lower.starts_with("https:") || lower.starts_with("http:") {
        return Err(ApiError::bad_request(
            "remote_image_unsupported",
            format!(
                "images[{i}]: remote image URLs are not fetched; send the image as a data: URL \
                 (data:image/png;base64,...)"
            ),
        ));
    }
    let bad_url = || {
        ApiError::bad_request(
            "invalid_image_url",
            format!("images[{i}]: `url` must be data:<image type>;base64,<data>"),
        )
    };
    let rest = url
        .strip_prefix("data:")
        .or_else(|| url.strip_prefix("DATA:"))
        .ok_or_else(bad_url)?;
    let (meta, data) = rest.split_once(',').ok_or_else(bad_url)?;
    let declared = meta
        .strip_suffix(";base64")
        .ok_or_else(bad_url)?
        .to_ascii_lowercase();
    let declared = match declared.as_str() {
        "image/jpg" => "image/jpeg".to_owned(),
        _ => declared,
    };
    if !matches!(
        declared.as_str(),
        "image/png" | "image/jpeg" | "image/gif" | "image/webp"
    ) {
        return Err(ApiError::bad_request(
            "unsupported_image_type",
            format!(
                "images[{i}]: `{declared}` is not image/png, image/jpeg, image/gif or image/webp"
            ),
        ));
    }
    // Refused before decoding: base64 holds 3 bytes in every 4 characters.
    if data.len() / 4 * 3 > limits.image_bytes + 2 {
        return Err(too_large(
            "image_too_large",
            format!("images[{i}] is larger than {} bytes", limits.image_bytes),
        ));
    }
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(data)
        .map_err(|e| {
            ApiError::bad_request(
                "invalid_image_base64",
                format!("images[{i}]: the data is not valid base64 ({e})"),
            )
        })?;
    if bytes.len() > limits.image_bytes {
        return Err(too_large(
            "image_too_large",
            format!("images[{i}] is larger than {} bytes", limits.image_bytes),
        ));
    }
    let Some((actual, _)) = sniff(&bytes) else {
        return Err(ApiError::bad_request(
            "unsupported_image_type",
            format!("images[{i}]: the data is not a PNG, JPEG, GIF or WebP image"),
        ));
    };
    if actual != declared {
        return Err(ApiError::bad_request(
            "image_type_mismatch",
            format!("images[{i}]: declared {declared}, but the data is {actual}"),
        ));
    }
    Ok(Image {
        media_type: actual,
        bytes,
    })
}

/// The directory of a session's images.
pub fn images_dir(session_dir: &Path) -> PathBuf {
    session_dir.join(crate::codex::isolation::SESSION_IMAGES_DIR)
}

/// Writes message `n`'s images durably (each file 0600, written and fsynced, then the
/// directory fsynced) and returns what its inbox line records. Files of an earlier attempt at
/// the same `n` (a crash before its inbox line was written) are replaced.
///
/// # Errors
/// Any I/O error; the files written so far are then removed.
pub fn store(session_dir: &Path, n: u64, images: &[Image]) -> std::io::Result<Vec<ImageRef>> {
    if images.is_empty() {
        return Ok(Vec::new());
    }
    let dir = images_dir(session_dir);
    crate::codex::home::create_private_dir(&dir)?;
    let mut refs = Vec::with_capacity(images.len());
    let written = (|| {
        for (i, img) in images.iter().enumerate() {
            let file = format!("msg_{n}_{i}.{}", extension(img.media_type));
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o600)
                .open(dir.join(&file))?;
            refs.push(ImageRef {
                file,
                media_type: img.media_type.to_owned(),
                bytes: img.bytes.len() as u64,
            });
            f.write_all(&img.bytes)?;
            f.sync_all()?;
        }
        std::fs::File::open(&dir)?.sync_all()
    })();
    if let Err(e) = written {
        remove(session_dir, &refs);
        return Err(e);
    }
    Ok(refs)
}

/// Removes stored images (a message that was not accepted after all).
pub fn remove(session_dir: &Path, refs: &[ImageRef]) {
    let dir = images_dir(session_dir);
    for r in refs {
        let _ = std::fs::remove_file(dir.join(&r.file));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    const PNG: &[u8] = b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR";

    fn url(media: &str, bytes: &[u8]) -> String {
        format!(
            "data:{media};base64,{}",
            base64::engine::general_purpose::STANDARD.encode(bytes)
        )
    }

    fn code(r: Result<Vec<Image>, ApiError>) -> &'static str {
        r.err().map_or("ok", |e| e.code)
    }

    #[test]
    fn each_bad_image_has_its_code() {
        let l = Limits::default();
        assert_eq!(code(decode(&[url("image/png", PNG)], &l)), "ok");
        assert_eq!(
            code(decode(&[url("image/jpg", b"\xff\xd8\xff\xe0")], &l)),
            "ok"
        );
        assert_eq!(
            code(decode(&["https://example.com/a.png".into()], &l)),
            "remote_image_unsupported"
        );
        assert_eq!(
            code(decode(&["data:image/png,abc".into()], &l)),
            "invalid_image_url"
        );
        assert_eq!(
            code(decode(&["file:///etc/passwd".into()], &l)),
            "invalid_image_url"
        );
        assert_eq!(
            code(decode(&["data:image/png;base64,***".into()], &l)),
            "invalid_image_base64"
        );
        assert_eq!(
            code(decode(&[url("image/svg+xml", b"<svg/>")], &l)),
            "unsupported_image_type"
        );
        assert_eq!(
            code(decode(&[url("image/png", b"not an image")], &l)),
            "unsupported_image_type"
        );
        assert_eq!(
            code(decode(&[url("image/jpeg", PNG)], &l)),
            "image_type_mismatch"
        );
        let many = vec![url("image/png", PNG); l.images_per_message + 1];
        assert_eq!(code(decode(&many, &l)), "too_many_images");
        let mut big = PNG.to_vec();
        big.resize(l.image_bytes + 1, 0);
        assert_eq!(
            code(decode(&[url("image/png", &big)], &l)),
            "image_too_large"
        );
        big.truncate(l.image_bytes);
        let n = l.message_image_bytes / l.image_bytes + 1;
        assert_eq!(
            code(decode(&vec![url("image/png", &big); n], &l)),
            "images_too_large"
        );
    }

    #[test]
    fn sniffing_knows_the_four_types() {
        assert_eq!(sniff(PNG).map(|t| t.0), Some("image/png"));
        assert_eq!(sniff(b"GIF89a..").map(|t| t.0), Some("image/gif"));
        assert_eq!(
            sniff(b"RIFF\0\0\0\0WEBPVP8 ").map(|t| t.0),
            Some("image/webp")
        );
        assert_eq!(sniff(b"RIFF\0\0\0\0WAVE"), None);
        assert_eq!(sniff(b""), None);
    }

    #[test]
    fn stored_images_are_private_and_whole() {
        let dir = tempfile::tempdir().expect("tempdir");
        let img = Image {
            media_type: "image/png",
            bytes: PNG.to_vec(),
        };
        let refs = store(dir.path(), 7, &[img.clone(), img]).expect("store");
        assert_eq!(refs[1].file, "msg_7_1.png");
        let path = images_dir(dir.path()).join(&refs[0].file);
        assert_eq!(std::fs::read(&path).expect("read"), PNG);
        let mode = std::fs::metadata(&path).expect("meta").permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        remove(dir.path(), &refs);
        assert!(!path.exists());
    }
}
