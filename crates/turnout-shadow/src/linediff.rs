//! A small line diff (longest common subsequence), for text bodies and for the HTML
//! report's side-by-side view.

/// The most cells (lines of one side × lines of the other, after the common prefix and
/// suffix are taken off) the LCS table may have; a larger middle is one changed hunk.
const MAX_CELLS: usize = 1_000_000;

/// A changed region: `a[a_start..a_start + a_len]` was replaced by
/// `b[b_start..b_start + b_len]` (either length may be zero).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Hunk {
    pub a_start: usize,
    pub a_len: usize,
    pub b_start: usize,
    pub b_len: usize,
}

/// The changed regions between `a` and `b`, in order.
pub(crate) fn diff<T: PartialEq>(a: &[T], b: &[T]) -> Vec<Hunk> {
    let prefix = a.iter().zip(b).take_while(|(x, y)| x == y).count();
    let (a_mid, b_mid) = (&a[prefix..], &b[prefix..]);
    let suffix = a_mid
        .iter()
        .rev()
        .zip(b_mid.iter().rev())
        .take_while(|(x, y)| x == y)
        .count();
    let a_mid = &a_mid[..a_mid.len() - suffix];
    let b_mid = &b_mid[..b_mid.len() - suffix];
    if a_mid.is_empty() && b_mid.is_empty() {
        return Vec::new();
    }
    let (n, m) = (a_mid.len(), b_mid.len());
    if n == 0 || m == 0 || n.saturating_mul(m) > MAX_CELLS {
        return vec![Hunk {
            a_start: prefix,
            a_len: n,
            b_start: prefix,
            b_len: m,
        }];
    }
    // lcs[i][j]: the LCS length of a_mid[i..] and b_mid[j..].
    let w = m + 1;
    let mut lcs = vec![0u32; (n + 1) * w];
    for i in (0..n).rev() {
        for j in (0..m).rev() {
            lcs[i * w + j] = if a_mid[i] == b_mid[j] {
                lcs[(i + 1) * w + j + 1] + 1
            } else {
                lcs[(i + 1) * w + j].max(lcs[i * w + j + 1])
            };
        }
    }
    let mut hunks = Vec::new();
    let mut open: Option<Hunk> = None;
    let (mut i, mut j) = (0, 0);
    let close = |open: &mut Option<Hunk>, hunks: &mut Vec<Hunk>| {
        if let Some(h) = open.take() {
            hunks.push(h);
        }
    };
    while i < n || j < m {
        if i < n && j < m && a_mid[i] == b_mid[j] {
            close(&mut open, &mut hunks);
            i += 1;
            j += 1;
            continue;
        }
        let h = open.get_or_insert(Hunk {
            a_start: prefix + i,
            a_len: 0,
            b_start: prefix + j,
            b_len: 0,
        });
        // Deletions before insertions when both keep the LCS.
        if i < n && (j == m || lcs[(i + 1) * w + j] >= lcs[i * w + j + 1]) {
            h.a_len += 1;
            i += 1;
        } else {
            h.b_len += 1;
            j += 1;
        }
    }
    close(&mut open, &mut hunks);
    hunks
}

/// One row of a side-by-side view: the line on each side (`None`: no line there) and
/// whether the row is part of a change.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Row<'a> {
    pub left: Option<&'a str>,
    pub right: Option<&'a str>,
    pub changed: bool,
}

/// The rows of a side-by-side view of `a` and `b`: equal lines side by side, and each
/// changed hunk with its lines paired up in order.
pub(crate) fn side_by_side<'a>(a: &[&'a str], b: &[&'a str]) -> Vec<Row<'a>> {
    let mut rows = Vec::with_capacity(a.len().max(b.len()));
    let (mut i, mut j) = (0, 0);
    for h in diff(a, b) {
        while i < h.a_start {
            rows.push(Row {
                left: Some(a[i]),
                right: b.get(j).copied(),
                changed: false,
            });
            i += 1;
            j += 1;
        }
        for k in 0..h.a_len.max(h.b_len) {
            rows.push(Row {
                left: (k < h.a_len).then(|| a[h.a_start + k]),
                right: (k < h.b_len).then(|| b[h.b_start + k]),
                changed: true,
            });
        }
        i = h.a_start + h.a_len;
        j = h.b_start + h.b_len;
    }
    while i < a.len() {
        rows.push(Row {
            left: Some(a[i]),
            right: b.get(j).copied(),
            changed: false,
        });
        i += 1;
        j += 1;
    }
    rows
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(a_start: usize, a_len: usize, b_start: usize, b_len: usize) -> Hunk {
        Hunk {
            a_start,
            a_len,
            b_start,
            b_len,
        }
    }

    #[test]
    fn hunks() {
        let table: [(&str, &str, Vec<Hunk>); 7] = [
            ("a b c", "a b c", vec![]),
            ("a b c", "a x c", vec![h(1, 1, 1, 1)]),
            ("a b c", "a c", vec![h(1, 1, 1, 0)]),
            ("a c", "a b c", vec![h(1, 0, 1, 1)]),
            ("", "a", vec![h(0, 0, 0, 1)]),
            ("a b c d e", "a x c y e", vec![h(1, 1, 1, 1), h(3, 1, 3, 1)]),
            ("a b c", "c b a", vec![h(0, 2, 0, 0), h(3, 0, 1, 2)]),
        ];
        for (a, b, want) in table {
            let a: Vec<&str> = a.split_whitespace().collect();
            let b: Vec<&str> = b.split_whitespace().collect();
            assert_eq!(diff(&a, &b), want, "{a:?} {b:?}");
        }
    }

    #[test]
    fn rows() {
        let a = ["x", "old", "y"];
        let b = ["x", "new", "more", "y"];
        let rows = side_by_side(&a, &b);
        let got: Vec<(Option<&str>, Option<&str>, bool)> =
            rows.iter().map(|r| (r.left, r.right, r.changed)).collect();
        assert_eq!(
            got,
            vec![
                (Some("x"), Some("x"), false),
                (Some("old"), Some("new"), true),
                (None, Some("more"), true),
                (Some("y"), Some("y"), false),
            ]
        );
    }
}
