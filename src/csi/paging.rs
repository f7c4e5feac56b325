//! Paging for ListVolumes and ListSnapshots. Entries are ordered by ID and a
//! token names the last ID returned, so volumes added or removed between
//! pages never make a page repeat or skip an entry that stayed.

use crate::error::{CsiError, CsiResult};

const TOKEN_PREFIX: &str = "after:";

/// Returns the page of `items` (sorted by `key`) after `token`, at most
/// `max_entries` long (0 = all), and the token for the next page ("" = end).
pub fn page<T>(
    items: Vec<T>,
    key: impl Fn(&T) -> &str,
    max_entries: i32,
    token: &str,
) -> CsiResult<(Vec<T>, String)> {
    if max_entries < 0 {
        return Err(CsiError::InvalidArgument(
            "max_entries must not be negative".into(),
        ));
    }
    let after = if token.is_empty() {
        None
    } else {
        Some(decode(token).ok_or_else(|| {
            CsiError::Aborted(format!(
                "starting_token {token:?} was not issued by this driver; list again from the start"
            ))
        })?)
    };
    let mut rest: Vec<T> = match &after {
        None => items,
        Some(after) => items
            .into_iter()
            .filter(|item| key(item) > after.as_str())
            .collect(),
    };
    let limit = if max_entries == 0 {
        rest.len()
    } else {
        max_entries as usize
    };
    if rest.len() <= limit {
        return Ok((rest, String::new()));
    }
    rest.truncate(limit);
    let next = rest
        .last()
        .map(|item| encode(key(item)))
        .unwrap_or_default();
    Ok((rest, next))
}

fn encode(id: &str) -> String {
    format!("{TOKEN_PREFIX}{}", hex::encode(id))
}

fn decode(token: &str) -> Option<String> {
    let hex = token.strip_prefix(TOKEN_PREFIX)?;
    if hex.is_empty() {
        return None;
    }
    String::from_utf8(hex::decode(hex).ok()?).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("v{i:03}")).collect()
    }

    #[test]
    fn pages_cover_everything_once() {
        let all = ids(10);
        let mut seen = Vec::new();
        let mut token = String::new();
        loop {
            let (page, next) = page(all.clone(), |s| s.as_str(), 3, &token).unwrap();
            seen.extend(page);
            if next.is_empty() {
                break;
            }
            token = next;
        }
        assert_eq!(seen, all);
    }

    #[test]
    fn additions_between_pages_do_not_repeat_entries() {
        let mut all = ids(6);
        let (first, token) = page(all.clone(), |s| s.as_str(), 3, "").unwrap();
        all.insert(0, "a-new".into());
        all.push("z-new".into());
        let (second, _) = page(all, |s| s.as_str(), 0, &token).unwrap();
        assert!(first.iter().all(|f| !second.contains(f)));
        assert!(second.contains(&"z-new".to_string()));
    }

    #[test]
    fn bad_tokens_abort_and_negative_sizes_are_invalid() {
        assert!(matches!(
            page(ids(3), |s| s.as_str(), 1, "garbage"),
            Err(CsiError::Aborted(_))
        ));
        assert!(matches!(
            page(ids(3), |s| s.as_str(), 1, "after:zz"),
            Err(CsiError::Aborted(_))
        ));
        assert!(matches!(
            page(ids(3), |s| s.as_str(), -1, ""),
            Err(CsiError::InvalidArgument(_))
        ));
    }
}
