use super::*;

const MINIMAL: &str = r#"
    [listeners]
    license = "127.0.0.1:8080"
    admin = "127.0.0.1:9090"
    [providers.sim]
    kind = "passthrough"
    endpoints = ["http://127.0.0.1:8090/AcquireLicense"]
    error_header = "X-AxDRM-ErrorMessage"
    [routes]
    widevine = "sim"
"#;

fn parse(text: &str) -> Result<Config, ConfigError> {
    Config::parse(text, &|_| None)
}

#[test]
fn ipv6_clients_are_counted_per_slash_64_unless_told_otherwise() {
    assert_eq!(parse(MINIMAL).unwrap().rate_limits.ipv6_prefix, 64);
    let wider = parse(&format!("{MINIMAL}\n[rate_limits]\nipv6_prefix = 48\n")).unwrap();
    assert_eq!(wider.rate_limits.ipv6_prefix, 48);
    let none = parse(&format!("{MINIMAL}\n[rate_limits]\nipv6_prefix = 0\n")).unwrap_err();
    assert_eq!(none.key, "rate_limits.ipv6_prefix");
}

#[test]
fn a_disabled_demo_needs_no_root_and_an_enabled_one_does() {
    let disabled = parse(&format!("{MINIMAL}\n[demo]\nenabled = false\n")).unwrap();
    assert_eq!(disabled.demo_root, None);
    let rootless = parse(&format!("{MINIMAL}\n[demo]\nenabled = true\n")).unwrap_err();
    assert_eq!(rootless.key, "demo.root");
}

#[test]
fn minimal_file_gets_production_defaults() {
    let config = parse(MINIMAL).unwrap();
    let provider = &config.routes[&Drm::Widevine][0];
    assert_eq!(provider.max_concurrent_streams, 100);
    assert_eq!(provider.protocol, Protocol::H2);
    assert_eq!(config.server.max_challenge_bytes, 65536);
    let endpoint = &provider.endpoints.for_drm(Drm::Widevine).unwrap()[0];
    assert_eq!(endpoint.authority, "127.0.0.1:8090");
    assert_eq!(endpoint.path_and_query, "/AcquireLicense");
    assert!(!endpoint.tls);
    let exposed = config.cors.expose_headers.to_ascii_lowercase();
    assert!(exposed.contains("x-axdrm-errormessage"), "{exposed}");
    assert!(config.cors.expose_headers.contains("X-Request-Id"));
}

#[test]
fn a_stream_limit_makes_every_policy_renew_on_its_interval_and_grace() {
    let text = format!(
        "{MINIMAL}\n[auth]\n[[auth.keys]]\nkind = \"secret\"\nalgorithm = \"HS256\"\n\
         secret = \"a-literal-secret-of-at-least-32-bytes\"\n\
         [catalog]\npath = \"catalog.toml\"\n\
         [policies.default]\nlicense_duration_seconds = 86400\n\
         [policies.live]\nrenewal_interval_seconds = 30\n\
         [streams]\nmax_per_user = 2\ngrace_seconds = 20\n"
    );
    let config = parse(&text).unwrap();
    let default = &config.policies["default"];
    assert_eq!(
        (default.renewal_interval_seconds, default.license_seconds()),
        (300, 320),
        "a renewing license lasts its interval and grace, not its day"
    );
    let live = &config.policies["live"];
    assert_eq!(
        (live.license_seconds(), live.renewal_retry_seconds()),
        (50, 5)
    );

    let config = parse(&format!(
        "{MINIMAL}\n[policies.default]\nlicense_duration_seconds = 86400\n"
    ))
    .unwrap();
    let default = &config.policies["default"];
    assert!(!default.renews());
    assert_eq!(default.license_seconds(), 86400);
}

#[test]
fn a_redis_store_is_one_server_a_cluster_or_a_master_behind_sentinels() {
    let store = |lines: &str| {
        parse(&format!(
            "{MINIMAL}\n[store]\nkind = \"redis\"\n{lines}\n[rate_limits]\nshared = true\n\
             per_client = {{ per_second = 5.0, burst = 5 }}\n"
        ))
    };
    let error = |lines: &str| store(lines).map(drop).unwrap_err().key;
    assert_eq!(error(""), "store.redis_url");
    assert_eq!(
        error("redis_url = \"redis://a\"\ncluster_nodes = [\"redis://b\"]"),
        "store.redis_url"
    );
    assert_eq!(
        error("cluster_nodes = [\"redis://b:1\", \"http://c:2\"]"),
        "store.cluster_nodes[1]"
    );
    assert_eq!(
        error("sentinels = [\"redis://s:26379\"]"),
        "store.master_name"
    );
    let config = store(
        "sentinels = [\"redis://s:26379\"]\nmaster_name = \"m\"\nmaster_password = \"pw-secret\"",
    )
    .unwrap();
    let settings = format!("{:?}", config.store.unwrap());
    assert!(settings.contains("Sentinel(1 sentinels, m)"), "{settings}");
    assert!(!settings.contains("pw-secret"), "{settings}");
}

#[test]
fn errors_name_the_place_not_the_value() {
    let text = format!("{MINIMAL}\n[auth]\nkeys = \"s3cr3t-value\"");
    let err = parse(&text).unwrap_err();
    assert_eq!(err.key, "auth.keys");
    assert!(!err.to_string().contains("s3cr3t"), "{err}");
    let syntax = parse("[listeners]\nlicense = \"127.0.0.1:1\"\nadmin = s3cr3t\n").unwrap_err();
    assert!(
        syntax.key.starts_with("(syntax) line 3, column 9"),
        "{syntax}"
    );
    assert!(!syntax.to_string().contains("s3cr3t"), "{syntax}");
    let endpoint = parse(&MINIMAL.replace(
        "http://127.0.0.1:8090/AcquireLicense",
        "http//provider?key=s3cr3t",
    ))
    .unwrap_err();
    assert!(!endpoint.to_string().contains("s3cr3t"), "{endpoint}");
}

#[test]
fn old_section_names_are_read_with_a_warning() {
    let old = MINIMAL.replace("[providers.sim]", "[vendors.sim]");
    let config = parse(&format!("{old}\n[token_cache]\nmax_entries = 7")).unwrap();
    assert!(config.providers.contains_key("sim"));
    assert_eq!(config.authorization_cache.max_entries, 7);
    assert_eq!(config.deprecations.len(), 2, "{:?}", config.deprecations);
    let both = format!("{old}\n[providers.other]\nkind = \"passthrough\"");
    assert_eq!(parse(&both).unwrap_err().key, "vendors");
    assert!(parse(MINIMAL).unwrap().deprecations.is_empty());
}

#[test]
fn unknown_key_is_named_with_its_path() {
    let err = parse(&MINIMAL.replace("kind = ", "knd = \"x\"\nkind = ")).unwrap_err();
    assert_eq!(err.key, "providers.sim.knd");
    assert!(err.reason.contains("knd"), "{err}");
}

#[test]
fn wrong_type_names_the_full_key_path() {
    let text = format!("{MINIMAL}\n[providers.sim.timeouts]\nread_ms = \"soon\"");
    let err = parse(&text).unwrap_err();
    assert_eq!(err.key, "providers.sim.timeouts.read_ms", "{err}");
}

#[test]
fn route_to_a_missing_vendor_is_refused() {
    let err = parse(&MINIMAL.replace("widevine = \"sim\"", "playready = \"axinom\"")).unwrap_err();
    assert_eq!(err.key, "routes.playready");
}

#[test]
fn a_route_may_name_providers_in_order() {
    let backup = r#"
    [providers.backup]
    kind = "passthrough"
    endpoints = ["http://127.0.0.1:8091/AcquireLicense"]
    [providers.local]
    kind = "clearkey"
    "#;
    let users_and_catalog = "[auth]\n[[auth.keys]]\nkind = \"secret\"\nalgorithm = \"HS256\"\n\
         secret = \"0123456789abcdef0123456789abcdef\"\n[catalog]\npath = \"catalog.toml\"\n";
    let config = parse(&format!(
        "{}{backup}\n{users_and_catalog}",
        MINIMAL.replace("widevine = \"sim\"", "widevine = [\"sim\", \"backup\"]")
    ))
    .unwrap();
    let names: Vec<&str> = config.routes[&Drm::Widevine]
        .iter()
        .map(|provider| provider.name.as_str())
        .collect();
    assert_eq!(names, ["sim", "backup"]);
    for (route, key, reason) in [
        ("widevine = []", "routes.widevine", "at least one"),
        ("widevine = [\"sim\", \"sim\"]", "routes.widevine", "twice"),
        (
            "widevine = [\"sim\", \"gone\"]",
            "routes.widevine",
            "no provider named 'gone'",
        ),
        (
            "clearkey = [\"sim\", \"local\"]",
            "routes.clearkey",
            "answers locally",
        ),
        (
            "widevine = [\"sim\", \"backup\", \"sim\", \"backup\", \"sim\"]",
            "routes.widevine",
            "at most 4",
        ),
    ] {
        let err = parse(&format!(
            "{}{backup}",
            MINIMAL.replace("widevine = \"sim\"", route)
        ))
        .unwrap_err();
        assert_eq!(err.key, key, "{route}: {err}");
        assert!(err.reason.contains(reason), "{route}: {err}");
    }
    // A Widevine renewal must go to the provider that licensed its session, which only a
    // user's stream records tell: a Widevine list needs users and a catalog, and with them two
    // providers of Widevine open the store.
    let unrecorded = parse(&format!(
        "{}{backup}",
        MINIMAL.replace("widevine = \"sim\"", "widevine = [\"sim\", \"backup\"]")
    ))
    .unwrap_err();
    assert_eq!(unrecorded.key, "routes.widevine");
    assert!(
        unrecorded.reason.contains("[auth] and [catalog]"),
        "{unrecorded}"
    );
    for (route, extra, store) in [
        ("widevine = [\"sim\", \"backup\"]", users_and_catalog, true),
        ("widevine = \"sim\"", users_and_catalog, true),
        ("widevine = \"sim\"", "", false),
        ("widevine = \"sim\"", "[store]\n", false),
    ] {
        let config = parse(&format!(
            "{}{backup}\n{extra}",
            MINIMAL.replace("widevine = \"sim\"", route)
        ))
        .unwrap();
        assert_eq!(config.store.is_some(), store, "{route} {extra}");
    }
}

#[test]
fn unknown_drm_in_routes_is_refused() {
    let err = parse(&MINIMAL.replace("widevine = \"sim\"", "primetime = \"sim\"")).unwrap_err();
    assert!(err.key.starts_with("routes"), "{err}");
}

#[test]
fn bad_values_name_their_keys() {
    let cases = [
        ("\"127.0.0.1:9090\"", "\"localhost\"", "listeners.admin"),
        (
            "\"http://127.0.0.1:8090/AcquireLicense\"",
            "\"ftp://x/\"",
            "providers.sim.endpoints[0]",
        ),
        (
            "error_header = \"X-AxDRM-ErrorMessage\"",
            "retries = 99",
            "providers.sim.retries",
        ),
        (
            "error_header = \"X-AxDRM-ErrorMessage\"",
            "error_header = \"bad header\"",
            "providers.sim.error_header",
        ),
    ];
    for (from, to, key) in cases {
        let err = parse(&MINIMAL.replace(from, to)).unwrap_err();
        assert_eq!(err.key, key, "{err}");
    }
}

#[test]
fn challenge_limit_cannot_exceed_the_retry_buffer() {
    let err = parse(&format!("{MINIMAL}\n[server]\nmax_challenge_bytes = 70000")).unwrap_err();
    assert_eq!(err.key, "server.max_challenge_bytes");
}

#[test]
fn endpoints_keep_query_and_bracket_ipv6() {
    let endpoint = parse_endpoint("https://[::1]:8443/rights/?token=a").unwrap();
    assert_eq!(endpoint.authority, "[::1]:8443");
    assert_eq!(endpoint.path_and_query, "/rights/?token=a");
    assert_eq!(endpoint.port, 8443);
    let endpoint = parse_endpoint("https://drm.example.com/AcquireLicense").unwrap();
    assert_eq!(
        (endpoint.port, endpoint.authority.as_str()),
        (443, "drm.example.com")
    );
}

#[test]
fn origins_are_validated() {
    assert!(is_origin("https://player.example.com"));
    assert!(is_origin("http://localhost:3000"));
    assert!(!is_origin("https://player.example.com/"));
    assert!(!is_origin("https://player.example.com/app"));
    assert!(!is_origin("player.example.com"));
}

#[test]
fn a_catalog_in_the_store_needs_a_32_byte_key_encryption_key_named_by_its_key() {
    let with = |catalog: &str| {
        parse(&format!(
            "{MINIMAL}\n[catalog]\nsource = \"store\"\n{catalog}"
        ))
    };
    let missing = with("").unwrap_err();
    assert_eq!(missing.key, "catalog.key_encryption_key");
    let short = with("key_encryption_key = \"00112233\"").unwrap_err();
    assert_eq!(short.key, "catalog.key_encryption_key");
    assert!(!short.reason.contains("00112233"), "{}", short.reason);
    let previous = with(&format!(
        "key_encryption_key = \"{}\"\nprevious_key_encryption_keys = [\"{}\", \"nope\"]",
        "ab".repeat(32),
        "cd".repeat(32)
    ))
    .unwrap_err();
    assert_eq!(previous.key, "catalog.previous_key_encryption_keys[1]");
    let with_path = with(&format!(
        "key_encryption_key = \"{}\"\npath = \"catalog.toml\"",
        "ab".repeat(32)
    ))
    .unwrap_err();
    assert_eq!(with_path.key, "catalog.path");
    let config = with(&format!("key_encryption_key = \"{}\"", "ab".repeat(32))).unwrap();
    let Some(CatalogSettings::Store(stored)) = &config.catalog else {
        panic!("not a stored catalog");
    };
    assert_eq!(stored.keys.current, [0xab; 32]);
    assert!(!format!("{config:?}").contains(&"ab".repeat(32)));
    // The store it lives in is opened for it.
    assert!(config.store.is_some());
    let file = parse(&format!("{MINIMAL}\n[catalog]\nsource = \"file\"")).unwrap_err();
    assert_eq!(file.key, "catalog.path");
}

#[test]
fn single_use_tokens_need_stream_records_and_a_bounded_life() {
    let auth = |extra: &str| {
        format!(
            "{MINIMAL}\n[auth]\n{extra}\n[[auth.keys]]\nkind = \"secret\"\nalgorithm = \"HS256\"\n\
             secret = \"0123456789abcdef0123456789abcdef\"\n"
        )
    };
    let streamless = parse(&auth("single_use = true")).unwrap_err();
    assert_eq!(streamless.key, "auth.single_use");
    let with_streams = parse(&format!(
        "{}[streams]\nmax_per_user = 2\n[catalog]\npath = \"catalog.toml\"\n",
        auth("single_use_claim = \"once\"")
    ))
    .unwrap();
    let single_use = &with_streams.auth.as_ref().unwrap().single_use;
    assert_eq!(single_use.claim.as_deref(), Some("once"));
    assert_eq!(
        single_use.max_lifetime,
        std::time::Duration::from_secs(86_400)
    );
    assert!(
        with_streams.store.is_some(),
        "spent tokens live in the store"
    );
    let endless = parse(&format!(
        "{}[streams]\nmax_per_user = 2\n[catalog]\npath = \"catalog.toml\"\n",
        auth("single_use = true\nsingle_use_max_lifetime_seconds = 0")
    ))
    .unwrap_err();
    assert_eq!(endless.key, "auth.single_use_max_lifetime_seconds");
}

#[test]
fn territories_need_a_database_or_a_header() {
    let neither = parse(&format!("{MINIMAL}\n[territories]\nunknown = \"allow\"\n")).unwrap_err();
    assert_eq!(neither.key, "territories");
    let header = parse(&format!(
        "{MINIMAL}\n[territories]\ncountry_header = \"CF-IPCountry\"\n"
    ))
    .unwrap();
    let territories = header.territories.unwrap();
    assert_eq!(territories.unknown, UnknownCountry::Refuse);
    assert_eq!(territories.country_header.unwrap().as_str(), "cf-ipcountry");
}
