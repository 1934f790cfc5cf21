//! Reading Prometheus/OpenMetrics text (the agent's `/metrics`).

/// Sum of the samples named exactly `name` (any labels) in Prometheus/OpenMetrics text.
pub fn metric_value(text: &str, name: &str) -> Option<f64> {
    let mut found = None;
    for l in text.lines().filter(|l| !l.starts_with('#')) {
        let (sample, value) = match l.rsplit_once(' ') {
            Some(v) => v,
            None => continue,
        };
        let sname = sample.split('{').next().unwrap_or("").trim();
        if sname == name
            && let Ok(v) = value.trim().parse::<f64>()
        {
            found = Some(found.unwrap_or(0.0) + v);
        }
    }
    found
}

/// Samples of the metric `name` (exact sample name) in Prometheus/OpenMetrics text, with their
/// labels. Label values are unescaped (`\"`, `\\`, `\n`).
pub fn metric_samples(text: &str, name: &str) -> Vec<(std::collections::BTreeMap<String, String>, f64)> {
    let mut out = Vec::new();
    for l in text.lines().filter(|l| !l.starts_with('#')) {
        let (head, value) = match l.rsplit_once(' ') {
            Some(v) => v,
            None => continue,
        };
        let (sname, labels) = match head.split_once('{') {
            Some((n, rest)) => (n, rest.strip_suffix('}').unwrap_or(rest)),
            None => (head, ""),
        };
        if sname.trim() != name {
            continue;
        }
        let Ok(v) = value.trim().parse::<f64>() else { continue };
        let mut map = std::collections::BTreeMap::new();
        let mut rest = labels;
        while let Some((k, after)) = rest.split_once("=\"") {
            let mut val = String::new();
            let mut chars = after.char_indices();
            let mut end = after.len();
            while let Some((i, c)) = chars.next() {
                match c {
                    '\\' => match chars.next() {
                        Some((_, 'n')) => val.push('\n'),
                        Some((_, c2)) => val.push(c2),
                        None => {}
                    },
                    '"' => {
                        end = i + 1;
                        break;
                    }
                    c => val.push(c),
                }
            }
            map.insert(k.trim_start_matches(',').trim().to_string(), val);
            rest = after[end..].trim_start_matches(',');
        }
        out.push((map, v));
    }
    out
}
