//! Reading the service's `/metrics` page: one parsed value, compared exactly.

/// Sum of the series of `name` in a Prometheus text page whose labels contain `label` (`""`
/// for all); 0 when there is none.
pub fn metric_sum(page: &str, name: &str, label: &str) -> f64 {
    page.lines()
        .filter(|line| !line.starts_with('#'))
        .filter_map(|line| {
            let (series, value) = line.rsplit_once(' ')?;
            let (metric, labels) = match series.split_once('{') {
                Some((metric, labels)) => (metric, labels),
                None => (series, ""),
            };
            (metric == name && labels.contains(label)).then(|| value.parse::<f64>().ok())?
        })
        .sum()
}

/// Asserts one series of a Prometheus text page: `expected` is written as the page writes it,
/// `name{labels} value` (or `name value`); the series must be there with exactly those labels,
/// and its parsed value must equal the expected one (`… 1` does not pass for 10 or 15).
#[track_caller]
pub fn assert_metric(page: &str, expected: &str) {
    let (series, value) = expected
        .rsplit_once(' ')
        .unwrap_or_else(|| panic!("{expected:?} is not `series value`"));
    let want: f64 = value.parse().expect("the expected value is a number");
    let found = page
        .lines()
        .filter(|line| !line.starts_with('#'))
        .find_map(|line| {
            let (s, v) = line.rsplit_once(' ')?;
            (s == series).then(|| v.parse::<f64>().ok())?
        });
    match found {
        Some(got) => assert_eq!(got, want, "{series} is {got}, not {want}"),
        None => panic!("no series {series} on the page:\n{page}"),
    }
}
