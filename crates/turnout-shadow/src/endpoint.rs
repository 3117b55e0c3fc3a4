//! Endpoints: requests grouped by method and route, so that `/items/3` and `/items/4` are
//! one endpoint, `GET /items/{id}`.

/// The endpoint of a request: the method in upper case, a space, and the path of `target`
/// with its query (and any fragment) dropped and each identifier-like segment folded to
/// `{id}`.
///
/// A segment is folded when it is
/// - a number: ASCII digits only (`42`, `007`);
/// - a UUID: 8-4-4-4-12 hex digits, any case;
/// - long hex: 16 or more hex digits and nothing else (hashes, Mongo ids, our request ids).
///
/// An absolute-form target (`http://host/path`) keeps only its path; an empty path is `/`;
/// the asterisk-form (`OPTIONS *`) stays `*`. Percent-encoding is left as it is.
///
/// ```
/// assert_eq!(turnout_shadow::endpoint("get", "/items/42?full=1"), "GET /items/{id}");
/// ```
pub fn endpoint(method: &str, target: &str) -> String {
    let method = method.trim().to_ascii_uppercase();
    let mut path = target.trim();
    if let Some(i) = path.find(['?', '#']) {
        path = &path[..i];
    }
    if path == "*" {
        return format!("{method} *");
    }
    // Absolute form: drop `scheme://authority`.
    if let Some(rest) = path
        .strip_prefix("http://")
        .or_else(|| path.strip_prefix("https://"))
    {
        path = rest.find('/').map_or("", |i| &rest[i..]);
    }
    let mut out = String::with_capacity(method.len() + 1 + path.len());
    out.push_str(&method);
    out.push(' ');
    if !path.starts_with('/') {
        out.push('/');
    }
    for (i, segment) in path.split('/').enumerate() {
        if i > 0 {
            out.push('/');
        }
        if is_identifier(segment) {
            out.push_str("{id}");
        } else {
            out.push_str(segment);
        }
    }
    if out.len() == method.len() + 1 {
        out.push('/');
    }
    out
}

/// Whether a path segment looks like an identifier (see [`endpoint`]).
fn is_identifier(segment: &str) -> bool {
    let b = segment.as_bytes();
    if b.is_empty() {
        return false;
    }
    if b.iter().all(u8::is_ascii_digit) {
        return true;
    }
    if b.len() >= 16 && b.iter().all(u8::is_ascii_hexdigit) {
        return true;
    }
    is_uuid(b)
}

fn is_uuid(b: &[u8]) -> bool {
    b.len() == 36
        && b.iter().enumerate().all(|(i, c)| match i {
            8 | 13 | 18 | 23 => *c == b'-',
            _ => c.is_ascii_hexdigit(),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn folds_identifiers() {
        let table = [
            ("GET", "/items/42", "GET /items/{id}"),
            ("get", "/items/42?full=1&x=2", "GET /items/{id}"),
            ("GET", "/items/42#frag", "GET /items/{id}"),
            ("GET", "/", "GET /"),
            ("GET", "", "GET /"),
            ("GET", "?q=1", "GET /"),
            ("OPTIONS", "*", "OPTIONS *"),
            ("GET", "http://example.com/a/1", "GET /a/{id}"),
            ("GET", "http://example.com", "GET /"),
            ("GET", "/items/", "GET /items/"),
            ("GET", "/users/7/orders/1234", "GET /users/{id}/orders/{id}"),
            (
                "DELETE",
                "/o/123e4567-E89B-12d3-a456-426614174000",
                "DELETE /o/{id}",
            ),
            ("GET", "/blob/0123456789abcdef", "GET /blob/{id}"),
            ("GET", "/blob/0123456789abcde", "GET /blob/0123456789abcde"),
            ("GET", "/blob/507f1f77bcf86cd799439011", "GET /blob/{id}"),
            ("GET", "/v2/items", "GET /v2/items"),
            ("GET", "/items/42abc", "GET /items/42abc"),
            ("GET", "/a//b", "GET /a//b"),
            (
                "GET",
                "/123e4567-e89b-12d3-a456-42661417400",
                "GET /123e4567-e89b-12d3-a456-42661417400",
            ),
            ("GET", "relative/5", "GET /relative/{id}"),
        ];
        for (method, target, want) in table {
            assert_eq!(endpoint(method, target), want, "{method} {target}");
        }
    }
}
