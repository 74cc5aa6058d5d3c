//! The device label of a session ("Chrome on Android"): a short name for the owner's session
//! list, derived by the edge from the login's `User-Agent`. A hint for people, never trusted for
//! anything: it is built from fixed names or one sanitised product token, bounded in length, and
//! checked again by the worker before it is stored.

/// Longest label, in bytes (labels are ASCII).
pub const DEVICE_LABEL_MAX: usize = 48;
/// Only this much of a `User-Agent` is looked at.
const UA_SCAN_MAX: usize = 512;
/// Longest product token used when no browser or system is recognised (`curl/8.5` → `curl`).
const PRODUCT_MAX: usize = 32;

/// Browser markers, most specific first (Edge, Opera and Samsung Internet also say `Chrome/`,
/// Chrome also says `Safari/`).
const BROWSERS: &[(&str, &str)] = &[
    ("Edg/", "Edge"),
    ("EdgA/", "Edge"),
    ("EdgiOS/", "Edge"),
    ("OPR/", "Opera"),
    ("SamsungBrowser/", "Samsung Internet"),
    ("Firefox/", "Firefox"),
    ("FxiOS/", "Firefox"),
    ("CriOS/", "Chrome"),
    ("HeadlessChrome/", "Headless Chrome"),
    ("Chromium/", "Chromium"),
    ("Chrome/", "Chrome"),
    ("Safari/", "Safari"),
];

/// System markers, most specific first (Android also says `Linux`, iOS also says `Mac OS X`).
const SYSTEMS: &[(&str, &str)] = &[
    ("Android", "Android"),
    ("iPhone", "iOS"),
    ("iPad", "iPadOS"),
    ("CrOS", "ChromeOS"),
    ("Windows", "Windows"),
    ("Macintosh", "macOS"),
    ("Mac OS X", "macOS"),
    ("Linux", "Linux"),
];

/// A label for a `User-Agent` value: "Browser on System", or either alone, or the first product
/// token (`curl/8.5.0` → `curl`); `None` when nothing usable is left.
pub fn label(user_agent: &str) -> Option<String> {
    let mut end = user_agent.len().min(UA_SCAN_MAX);
    while !user_agent.is_char_boundary(end) {
        end -= 1;
    }
    let ua = &user_agent[..end];
    let find = |table: &[(&str, &'static str)]| {
        table
            .iter()
            .find(|(marker, _)| ua.contains(marker))
            .map(|(_, name)| *name)
    };
    let text = match (find(BROWSERS), find(SYSTEMS)) {
        (Some(b), Some(s)) => format!("{b} on {s}"),
        (Some(one), None) | (None, Some(one)) => one.to_string(),
        (None, None) => {
            let product = ua.trim().split(['/', ' ', ';', '(']).next().unwrap_or("");
            let product: String = product
                .chars()
                .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'))
                .take(PRODUCT_MAX)
                .collect();
            product
        }
    };
    sanitize(&text)
}

/// A stored label as it may be shown: ASCII letters, digits, spaces and `.-_+()`, runs of spaces
/// collapsed, at most [`DEVICE_LABEL_MAX`] bytes; `None` when nothing is left.
pub fn sanitize(label: &str) -> Option<String> {
    let mut out = String::new();
    for c in label.chars() {
        let c = if c.is_whitespace() { ' ' } else { c };
        let keep =
            c.is_ascii_alphanumeric() || matches!(c, ' ' | '.' | '-' | '_' | '+' | '(' | ')');
        if !keep || (c == ' ' && (out.is_empty() || out.ends_with(' '))) {
            continue;
        }
        if out.len() == DEVICE_LABEL_MAX {
            break;
        }
        out.push(c);
    }
    let out = out.trim_end().to_string();
    (!out.is_empty()).then_some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_common_browsers_and_systems() {
        for (ua, want) in [
            ("Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0.0.0 Safari/537.36", "Chrome on Linux"),
            ("Mozilla/5.0 (Linux; Android 14; Pixel 8) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0.0.0 Mobile Safari/537.36", "Chrome on Android"),
            ("Mozilla/5.0 (iPhone; CPU iPhone OS 17_5 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.5 Mobile/15E148 Safari/604.1", "Safari on iOS"),
            ("Mozilla/5.0 (iPad; CPU OS 17_5 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) CriOS/131.0 Mobile/15E148 Safari/604.1", "Chrome on iPadOS"),
            ("Mozilla/5.0 (Macintosh; Intel Mac OS X 14_5) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.5 Safari/605.1.15", "Safari on macOS"),
            ("Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0.0.0 Safari/537.36 Edg/131.0.0.0", "Edge on Windows"),
            ("Mozilla/5.0 (Windows NT 10.0; Win64; x64; rv:133.0) Gecko/20100101 Firefox/133.0", "Firefox on Windows"),
            ("Mozilla/5.0 (X11; CrOS x86_64 14541.0.0) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0.0.0 Safari/537.36", "Chrome on ChromeOS"),
            ("Mozilla/5.0 (Linux; Android 14; SM-S918B) AppleWebKit/537.36 (KHTML, like Gecko) SamsungBrowser/26.0 Chrome/122.0.0.0 Mobile Safari/537.36", "Samsung Internet on Android"),
            ("Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0.0.0 Safari/537.36 OPR/115.0.0.0", "Opera on Windows"),
            ("Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) HeadlessChrome/131.0.0.0 Safari/537.36", "Headless Chrome on Linux"),
            ("Mozilla/5.0 (X11; Linux x86_64) Chromium/120.0", "Chromium on Linux"),
            ("Mozilla/5.0 (X11; Linux x86_64)", "Linux"),
            ("Opera/9.80 Firefox/3.0", "Firefox"),
        ] {
            assert_eq!(label(ua).as_deref(), Some(want), "{ua}");
        }
    }

    #[test]
    fn falls_back_to_the_product_token() {
        assert_eq!(label("curl/8.5.0").as_deref(), Some("curl"));
        assert_eq!(
            label("  switchboard-cli/0.1 (x)").as_deref(),
            Some("switchboard-cli")
        );
        assert_eq!(label("reqwest").as_deref(), Some("reqwest"));
        assert_eq!(label(&"a".repeat(100)).unwrap().len(), PRODUCT_MAX);
        assert_eq!(
            label("<script>alert(1)</script>/1").as_deref(),
            Some("scriptalert")
        );
        assert_eq!(label(""), None);
        assert_eq!(label("   "), None);
        assert_eq!(label("/1.0"), None);
        assert_eq!(label("日本語/1.0"), None);
    }

    #[test]
    fn only_the_head_of_a_long_agent_counts() {
        let long = format!("{}Firefox/1", "x".repeat(UA_SCAN_MAX));
        assert_eq!(label(&long).unwrap().len(), PRODUCT_MAX);
        // the cut never splits a character
        let wide = format!("{}é Firefox/1", "x".repeat(UA_SCAN_MAX - 1));
        assert_eq!(label(&wide).unwrap().len(), PRODUCT_MAX);
    }

    #[test]
    fn sanitises_stored_labels() {
        assert_eq!(
            sanitize("Chrome on Linux").as_deref(),
            Some("Chrome on Linux")
        );
        assert_eq!(sanitize("  a \t\n b  ").as_deref(), Some("a b"));
        assert_eq!(
            sanitize("<img src=x onerror=1>").as_deref(),
            Some("img srcx onerror1")
        );
        assert_eq!(sanitize("\u{202e}evil\u{0}").as_deref(), Some("evil"));
        assert_eq!(
            sanitize(&"b ".repeat(100)).unwrap().len(),
            DEVICE_LABEL_MAX - 1
        );
        assert_eq!(sanitize(&"c".repeat(100)).unwrap().len(), DEVICE_LABEL_MAX);
        assert_eq!(sanitize("<>"), None);
        assert_eq!(sanitize(""), None);
    }
}
