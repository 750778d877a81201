//! Key IDs in a DASH manifest, per adaptation set: what operators need to fill the catalog.

use quick_xml::Reader;
use quick_xml::events::{BytesStart, Event};

use crate::challenge::Kid;
use crate::challenge::pssh;

/// Key IDs of one adaptation set: `cenc:default_KID`s and each DRM's pssh.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct AdaptationSetKids {
    pub id: Option<String>,
    pub content_type: Option<String>,
    pub default_kids: Vec<Kid>,
    /// (DRM name, key IDs in its pssh) per `cenc:pssh` element.
    pub pssh: Vec<(&'static str, Vec<Kid>)>,
}

const MAX_DEPTH: usize = 64;

pub fn dash_kids(mpd: &[u8]) -> Result<Vec<AdaptationSetKids>, String> {
    let mut reader = Reader::from_reader(mpd);
    let mut sets: Vec<AdaptationSetKids> = Vec::new();
    let mut depth = 0usize;
    let mut in_pssh = false;
    let mut pssh_text = String::new();
    let mut buf = Vec::new();
    loop {
        let event = reader
            .read_event_into(&mut buf)
            .map_err(|e| format!("not well-formed XML: {e}"))?;
        match &event {
            Event::Start(element) | Event::Empty(element) => {
                let name = element.local_name();
                if name.as_ref() == b"AdaptationSet" {
                    sets.push(AdaptationSetKids {
                        id: attribute(element, b"id")?,
                        content_type: match attribute(element, b"contentType")? {
                            Some(kind) => Some(kind),
                            None => attribute(element, b"mimeType")?,
                        },
                        ..Default::default()
                    });
                } else if name.as_ref() == b"ContentProtection"
                    && let Some(kid) = attribute(element, b"default_KID")?
                {
                    let set = sets
                        .last_mut()
                        .ok_or("ContentProtection outside an AdaptationSet")?;
                    let kid: Kid = kid.parse()?;
                    if !set.default_kids.contains(&kid) {
                        set.default_kids.push(kid);
                    }
                } else if name.as_ref() == b"pssh" && matches!(event, Event::Start(_)) {
                    in_pssh = true;
                    pssh_text.clear();
                }
                if matches!(event, Event::Start(_)) {
                    depth += 1;
                    if depth > MAX_DEPTH {
                        return Err("manifest nested too deep".into());
                    }
                }
            }
            Event::Text(text) if in_pssh => {
                pssh_text.push_str(&text.decode().map_err(|e| e.to_string())?);
            }
            Event::End(element) => {
                depth = depth.saturating_sub(1);
                if element.local_name().as_ref() == b"pssh" && in_pssh {
                    in_pssh = false;
                    let set = sets.last_mut().ok_or("pssh outside an AdaptationSet")?;
                    let (system_id, kids) = pssh::kids_in_base64_box(&pssh_text)?;
                    set.pssh.push((pssh::system_name(system_id), kids));
                }
            }
            Event::Eof => break,
            _ => {}
        }
        buf.clear();
    }
    Ok(sets)
}

fn attribute(element: &BytesStart, local_name: &[u8]) -> Result<Option<String>, String> {
    for attribute in element.attributes() {
        let attribute = attribute.map_err(|e| e.to_string())?;
        if attribute.key.local_name().as_ref() == local_name {
            let value = attribute.unescape_value().map_err(|e| e.to_string())?;
            return Ok(Some(value.into_owned()));
        }
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn demo_manifest_lists_the_demo_kid_everywhere() {
        let sets = dash_kids(include_bytes!("../../../tests/fixtures/clearkey-demo.mpd")).unwrap();
        assert_eq!(sets.len(), 1);
        let set = &sets[0];
        let demo: Kid = "01020304-0506-0708-090a-0b0c0d0e0f10".parse().unwrap();
        assert_eq!(set.content_type.as_deref(), Some("video"));
        assert_eq!(set.default_kids, vec![demo]);
        let drms: Vec<&str> = set.pssh.iter().map(|(drm, _)| *drm).collect();
        assert_eq!(drms, ["clearkey", "playready", "widevine"]);
        assert!(set.pssh.iter().all(|(_, kids)| kids == &vec![demo]));
    }

    #[test]
    fn broken_manifests_are_errors() {
        assert!(dash_kids(b"<MPD><ContentProtection default_KID=\"x\"/></MPD>").is_err());
        assert!(dash_kids(b"<MPD><AdaptationSet><ContentProtection><pssh>!!</pssh></ContentProtection></AdaptationSet></MPD>").is_err());
        let deep = format!("{}{}", "<a>".repeat(100), "</a>".repeat(100));
        assert!(dash_kids(deep.as_bytes()).is_err());
    }
}
