//! `template.yaml`'s limits, as deployed with its defaults: every function's
//! containers times its pool size fit the database's connection budget, and
//! the busy routes have throttles of their own. The arithmetic is in the
//! README ("Limits and how to size them").

use serde_norway::Value;

/// Client connections of Supabase's transaction pooler on its smaller compute
/// sizes, and the budget the template's defaults are sized for.
const DATABASE_CONNECTION_BUDGET: i64 = 200;
/// A new AWS account's concurrency, and what Lambda keeps unreserved.
const ACCOUNT_CONCURRENCY: i64 = 1_000;
const UNRESERVED_MINIMUM: i64 = 100;

fn template() -> Value {
    let path = format!("{}/../template.yaml", env!("CARGO_MANIFEST_DIR"));
    serde_norway::from_str(&std::fs::read_to_string(path).unwrap()).expect("template.yaml is YAML")
}

/// A literal number, or `!Ref Parameter` resolved to the parameter's default.
fn number(template: &Value, value: &Value, what: &str) -> i64 {
    if let Some(n) = value.as_i64() {
        return n;
    }
    let Value::Tagged(tagged) = value else {
        panic!("{what}: neither a number nor a !Ref: {value:?}");
    };
    assert_eq!(tagged.tag.to_string(), "!Ref", "{what}");
    let parameter = tagged.value.as_str().expect("!Ref names a parameter");
    template["Parameters"][parameter]["Default"]
        .as_i64()
        .unwrap_or_else(|| panic!("{what}: parameter {parameter} has no numeric default"))
}

fn functions(template: &Value) -> Vec<(String, Value)> {
    template["Resources"]
        .as_mapping()
        .unwrap()
        .iter()
        .filter(|(_, r)| r["Type"].as_str() == Some("AWS::Serverless::Function"))
        .map(|(name, r)| (name.as_str().unwrap().to_owned(), r.clone()))
        .collect()
}

#[test]
fn reserved_concurrency_times_pool_size_fits_the_database_budget() {
    let template = template();
    let pool_size = number(
        &template,
        &template["Globals"]["Function"]["Environment"]["Variables"]["DATABASE_POOL_SIZE"],
        "DATABASE_POOL_SIZE",
    );
    let mut reserved = 0;
    for (name, function) in functions(&template) {
        let concurrency = &function["Properties"]["ReservedConcurrentExecutions"];
        assert!(
            !concurrency.is_null(),
            "{name} has no ReservedConcurrentExecutions"
        );
        let containers = number(&template, concurrency, &name);
        assert!(containers >= 1, "{name}: 0 would disable it");
        reserved += containers;
    }
    assert!(
        reserved * pool_size <= DATABASE_CONNECTION_BUDGET,
        "{reserved} containers x {pool_size} connections exceed {DATABASE_CONNECTION_BUDGET}"
    );
    assert!(
        reserved <= ACCOUNT_CONCURRENCY - UNRESERVED_MINIMUM,
        "{reserved} reserved leaves Lambda less than {UNRESERVED_MINIMUM} unreserved"
    );
}

#[test]
fn the_busy_routes_have_throttles_of_their_own() {
    let template = template();
    let default_rate =
        &template["Resources"]["LiveApi"]["Properties"]["DefaultRouteSettings"]["ThrottlingRateLimit"];
    for (function, event) in [
        ("TokenFunction", "Token"),
        ("TokenSourceFunction", "TokenSource"),
        ("WebhookFunction", "Webhook"),
        ("ChatFunction", "Chat"),
        ("ReactionsFunction", "Reactions"),
    ] {
        let settings =
            &template["Resources"][function]["Properties"]["Events"][event]["Properties"]["RouteSettings"];
        let rate = &settings["ThrottlingRateLimit"];
        let burst = &settings["ThrottlingBurstLimit"];
        assert!(
            !rate.is_null() && !burst.is_null(),
            "{function} has no route throttle"
        );
        assert_ne!(rate, default_rate, "{function} shares the default throttle");
        assert!(
            number(&template, burst, function) >= number(&template, rate, function),
            "{function}: a burst below the rate"
        );
    }
    // A join rush: one token per viewer joining (about 833/s for 50,000 in a minute).
    let token_rate = number(
        &template,
        &template["Resources"]["TokenFunction"]["Properties"]["Events"]["Token"]["Properties"]["RouteSettings"]
            ["ThrottlingRateLimit"],
        "token",
    );
    assert!(token_rate >= 833, "{token_rate}");
}
