//! What licensegate forwards of a PlayReady request besides the challenge.

use http::HeaderValue;

use crate::drm::PLAYREADY_SOAP_ACTION;
use crate::http::problem::{Problem, Refusal};

/// Every PlayReady SOAP action (AcquireLicense, AcknowledgeLicense, JoinDomain...) is a name in
/// this namespace.
const PLAYREADY_SOAP_NAMESPACE: &str = "http://schemas.microsoft.com/DRM/2007/03/protocols/";
const MAX_SOAP_ACTION_NAME: usize = 64;

/// The SOAPAction forwarded with a PlayReady challenge: the player's, when it is one of
/// PlayReady's actions, else the license acquisition action. Anything else is refused, so a
/// player cannot hand the provider an arbitrary header.
pub(crate) fn soap_action(sent: Option<&HeaderValue>) -> Result<HeaderValue, Problem> {
    let Some(sent) = sent else {
        return Ok(HeaderValue::from_static(PLAYREADY_SOAP_ACTION));
    };
    let text = sent.to_str().unwrap_or_default();
    let unquoted = text
        .strip_prefix('"')
        .and_then(|t| t.strip_suffix('"'))
        .unwrap_or(text);
    let valid = unquoted
        .strip_prefix(PLAYREADY_SOAP_NAMESPACE)
        .is_some_and(|name| {
            (1..=MAX_SOAP_ACTION_NAME).contains(&name.len())
                && name.bytes().all(|b| b.is_ascii_alphabetic())
        });
    if valid {
        Ok(sent.clone())
    } else {
        Err(
            Problem::new(Refusal::SoapActionInvalid).with_detail(format!(
                "SOAPAction must be \"{PLAYREADY_SOAP_NAMESPACE}<Action>\""
            )),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn soap_actions_are_playready_actions_or_refused() {
        let header = |text: &str| HeaderValue::from_str(text).unwrap();
        assert_eq!(soap_action(None).unwrap(), PLAYREADY_SOAP_ACTION);
        for good in [
            PLAYREADY_SOAP_ACTION,
            "http://schemas.microsoft.com/DRM/2007/03/protocols/AcknowledgeLicense",
        ] {
            assert_eq!(soap_action(Some(&header(good))).unwrap(), good);
        }
        let long = format!("\"{PLAYREADY_SOAP_NAMESPACE}{}\"", "A".repeat(70_000));
        for bad in [
            "\"http://evil.example/AcquireLicense\"",
            "\"http://schemas.microsoft.com/DRM/2007/03/protocols/\"",
            "\"http://schemas.microsoft.com/DRM/2007/03/protocols/a/b\"",
            long.as_str(),
        ] {
            let refused = soap_action(Some(&header(bad))).unwrap_err();
            assert_eq!(refused.code, "soap_action_invalid");
        }
    }
}
