//! `${NAME}` and `${NAME:-default}` in string values, so addresses and secrets come from the
//! environment and never sit in a committed file. Substitution runs on the parsed tree, which
//! lets an unset variable be reported with the key that needed it.

use toml::Value;

use super::ConfigError;

pub fn substitute(
    value: &mut Value,
    path: &str,
    lookup: &dyn Fn(&str) -> Option<String>,
) -> Result<(), ConfigError> {
    match value {
        Value::String(text) if text.contains("${") => {
            *text = expand(text, path, lookup)?;
        }
        Value::Array(items) => {
            for (index, item) in items.iter_mut().enumerate() {
                substitute(item, &format!("{path}[{index}]"), lookup)?;
            }
        }
        Value::Table(table) => {
            for (key, item) in table.iter_mut() {
                let child = if path.is_empty() {
                    key.clone()
                } else {
                    format!("{path}.{key}")
                };
                substitute(item, &child, lookup)?;
            }
        }
        _ => {}
    }
    Ok(())
}

fn expand(
    text: &str,
    path: &str,
    lookup: &dyn Fn(&str) -> Option<String>,
) -> Result<String, ConfigError> {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(start) = rest.find("${") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let Some(end) = after.find('}') else {
            return Err(ConfigError::new(path, "unterminated ${ in value"));
        };
        let reference = &after[..end];
        let (name, default) = match reference.split_once(":-") {
            Some((name, default)) => (name, Some(default)),
            None => (reference, None),
        };
        if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            return Err(ConfigError::new(
                path,
                format!("'{name}' is not an environment variable name"),
            ));
        }
        match (lookup(name), default) {
            (Some(value), _) => out.push_str(&value),
            (None, Some(default)) => out.push_str(default),
            (None, None) => {
                return Err(ConfigError::new(
                    path,
                    format!("environment variable {name} is not set"),
                ));
            }
        }
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(name: &str) -> Option<String> {
        (name == "SECRET").then(|| "s3cr3t".to_string())
    }

    fn run(toml_text: &str) -> Result<Value, ConfigError> {
        let mut value: Value = toml::from_str(toml_text).unwrap();
        substitute(&mut value, "", &env).map(|_| value)
    }

    #[test]
    fn replaces_set_variables_and_defaults() {
        let value = run("a = \"key=${SECRET}!\"\nb = \"${MISSING:-127.0.0.1:80}\"").unwrap();
        assert_eq!(value["a"].as_str(), Some("key=s3cr3t!"));
        assert_eq!(value["b"].as_str(), Some("127.0.0.1:80"));
    }

    #[test]
    fn unset_variable_names_the_key_and_the_variable() {
        let err = run("[providers.x]\nendpoints = [\"ok\", \"${NOPE}\"]").unwrap_err();
        assert_eq!(err.key, "providers.x.endpoints[1]");
        assert!(err.reason.contains("NOPE"), "{err}");
    }

    #[test]
    fn malformed_references_are_errors() {
        assert!(run("a = \"${SECRET\"").is_err());
        assert!(run("a = \"${bad name}\"").is_err());
    }
}
