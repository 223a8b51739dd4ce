//! `template.yaml`'s limits, as deployed with its defaults: every function's
//! containers times its pool size fit the database's connection budget, and
//! the busy routes have throttles of their own (the arithmetic is in the
//! README, "Limits and how to size them"); its alarms watch metrics this
//! stack's API and functions publish; and every function's log group exists
//! before the function does. Its parameter patterns refuse at deploy time
//! what the functions would refuse at every cold start.

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

/// Every function of the template; the checks looping over them would pass
/// vacuously over none.
fn functions(template: &Value) -> Vec<(String, Value)> {
    let functions: Vec<(String, Value)> = template["Resources"]
        .as_mapping()
        .unwrap()
        .iter()
        .filter(|(_, r)| r["Type"].as_str() == Some("AWS::Serverless::Function"))
        .map(|(name, r)| (name.as_str().unwrap().to_owned(), r.clone()))
        .collect();
    let binaries = std::fs::read_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/../functions"))
        .expect("functions/")
        .count();
    assert_eq!(functions.len(), binaries, "one function per functions/<name>");
    functions
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

/// A route's throttle within its function's containers: a burst of at most
/// one request a container, and a rate of at most what they serve at
/// `per_container` requests a second each.
fn assert_within_containers(
    template: &Value,
    name: &str,
    settings: &Value,
    containers: i64,
    per_container: i64,
) {
    let burst = number(template, &settings["ThrottlingBurstLimit"], name);
    let rate = number(template, &settings["ThrottlingRateLimit"], name);
    assert!(
        burst <= containers,
        "{name}: a burst of {burst} over {containers} containers"
    );
    assert!(
        rate <= containers * per_container,
        "{name}: {rate}/s over what {containers} containers serve"
    );
}

/// The routes whose requests wait for a LiveKit call (a tenth of a second or
/// more) have few containers. Lambda past its reserved concurrency answers
/// API Gateway with a throttle, which the client gets as a bare 500 (and the
/// 5xx alarm counts); the route's own throttle answers 429 instead, so its
/// burst is at most the function's containers, and its rate at most what
/// they serve at about a tenth of a second a request.
#[test]
fn routes_that_wait_for_livekit_answer_429_before_their_containers_run_out() {
    let template = template();
    let mut checked = Vec::new();
    for (name, function) in functions(&template) {
        let properties = &function["Properties"];
        let concurrency = &properties["ReservedConcurrentExecutions"];
        let waits_for_livekit =
            is_ref_to(concurrency, "OtherConcurrency") || is_ref_to(concurrency, "HandConcurrency");
        if !waits_for_livekit {
            continue;
        }
        let containers = number(&template, concurrency, &name);
        let events = properties["Events"].as_mapping().expect("an HTTP route");
        for (_, event) in events {
            let settings = &event["Properties"]["RouteSettings"];
            assert!(!settings.is_null(), "{name} has no throttle of its own");
            assert_within_containers(&template, &name, settings, containers, 10);
        }
        checked.push(name);
    }
    assert_eq!(
        checked.len(),
        9,
        "start, end, chat-delete, moderate and the five stage changes: {checked:?}"
    );
    // A room's raised hands arrive at once: more than the owners' three.
    let hands = &template["Resources"]["StageHandFunction"]["Properties"]["ReservedConcurrentExecutions"];
    assert!(number(&template, hands, "stage-hand") > 3);
}

/// The reads (listings, chat history, viewers, stats, the stage) share
/// `ReadConcurrency`'s few containers each, so, as for the routes that wait
/// for LiveKit, their burst is at most those containers (a clump past them
/// gets API Gateway's 429, not the 500 of a throttled Lambda) and their rate
/// at most what the containers serve at about 5 ms a read. The chat history
/// is read by every viewer as they connect, so its own rate carries a join
/// rush (about 833/s for 50,000 viewers in a minute).
#[test]
fn reads_answer_429_before_their_containers_run_out() {
    let template = template();
    let default_settings = &template["Resources"]["LiveApi"]["Properties"]["DefaultRouteSettings"];
    let mut checked = Vec::new();
    for (name, function) in functions(&template) {
        let properties = &function["Properties"];
        let concurrency = &properties["ReservedConcurrentExecutions"];
        if !is_ref_to(concurrency, "ReadConcurrency") {
            continue;
        }
        let containers = number(&template, concurrency, &name);
        let events = properties["Events"].as_mapping().expect("an HTTP route");
        for (_, event) in events {
            let own = &event["Properties"]["RouteSettings"];
            let settings = if own.is_null() { default_settings } else { own };
            assert_within_containers(&template, &name, settings, containers, 200);
        }
        checked.push(name);
    }
    assert_eq!(
        checked.len(),
        6,
        "streams, stream, chat-history, stream-viewers, stream-stats and stage: {checked:?}"
    );
    let history = &template["Resources"]["ChatHistoryFunction"]["Properties"]["Events"]["ChatHistory"]["Properties"]
        ["RouteSettings"]["ThrottlingRateLimit"];
    let history_rate = number(&template, history, "chat-history");
    assert!(history_rate >= 833, "{history_rate}");
}

/// `!If [AppSecretHasOwnKmsKey, <kms:Decrypt of this secret through Secrets
/// Manager>, !Ref AWS::NoValue]`: the key, when the secret has one of its
/// own, decrypts only this secret and only for Secrets Manager. Returns the
/// statement's Sid.
fn decrypt_with_the_secrets_own_key(tag: &str, value: &Value) -> String {
    assert_eq!(tag, "!If", "a conditional statement: {value:?}");
    let branches = value.as_sequence().expect("!If [condition, then, else]");
    assert_eq!(branches.len(), 3, "{branches:?}");
    assert_eq!(branches[0].as_str(), Some("AppSecretHasOwnKmsKey"));
    assert!(is_ref_to(&branches[2], "AWS::NoValue"), "else: nothing");
    let statement = &branches[1];
    assert_eq!(statement["Effect"].as_str(), Some("Allow"));
    assert_eq!(statement["Action"].as_str(), Some("kms:Decrypt"));
    assert!(
        is_ref_to(&statement["Resource"], "AppSecretKmsKeyArn"),
        "{statement:?}"
    );
    let condition = &statement["Condition"]["StringEquals"];
    assert!(
        is_ref_to(&condition["kms:EncryptionContext:SecretARN"], "AppSecretArn"),
        "only this secret: {condition:?}"
    );
    let Value::Tagged(via) = &condition["kms:ViaService"] else {
        panic!("only through Secrets Manager: {condition:?}");
    };
    // The secret's region (the functions read it in the region its ARN
    // names): `!Sub [secretsmanager.${SecretRegion}…, {SecretRegion: the
    // ARN's fourth field}]`.
    assert_eq!(via.tag.to_string(), "!Sub");
    let sub = via.value.as_sequence().expect("!Sub [text, variables]");
    assert_eq!(
        sub[0].as_str(),
        Some("secretsmanager.${SecretRegion}.amazonaws.com")
    );
    let Value::Tagged(select) = &sub[1]["SecretRegion"] else {
        panic!("the region from the secret's ARN: {sub:?}");
    };
    assert_eq!(select.tag.to_string(), "!Select");
    let select = select.value.as_sequence().expect("!Select [index, list]");
    assert_eq!(select[0].as_u64(), Some(3), "arn:partition:service:REGION:…");
    let Value::Tagged(split) = &select[1] else {
        panic!("!Split of the ARN: {select:?}");
    };
    assert_eq!(split.tag.to_string(), "!Split");
    let split = split.value.as_sequence().expect("!Split [delimiter, text]");
    assert_eq!(split[0].as_str(), Some(":"));
    assert!(is_ref_to(&split[1], "AppSecretArn"), "{split:?}");
    let condition_name = &template()["Conditions"]["AppSecretHasOwnKmsKey"];
    assert!(!condition_name.is_null(), "the condition is defined");
    statement["Sid"].as_str().unwrap_or_default().to_owned()
}

/// `!Ref <name>` as the YAML parser sees it.
fn is_ref_to(value: &Value, name: &str) -> bool {
    matches!(value, Value::Tagged(tagged) if tagged.tag == "!Ref" && tagged.value.as_str() == Some(name))
}

#[test]
fn the_alarms_watch_this_stacks_api_and_scheduled_functions() {
    let template = template();
    let resources = &template["Resources"];
    let dimension = |metric: &Value, name: &str| -> Value {
        metric["Dimensions"]
            .as_sequence()
            .unwrap()
            .iter()
            .find(|d| d["Name"].as_str() == Some(name))
            .unwrap_or_else(|| panic!("no {name} dimension in {metric:?}"))["Value"]
            .clone()
    };

    // HTTP APIs publish `5xx` and `Count` (REST APIs' `5XXError` would never fire here).
    let api = &resources["ApiServerErrorsAlarm"]["Properties"];
    let metrics = api["Metrics"].as_sequence().unwrap();
    for (id, name) in [("serverErrors", "5xx"), ("requests", "Count")] {
        let stat = &metrics.iter().find(|m| m["Id"].as_str() == Some(id)).unwrap()["MetricStat"];
        assert_eq!(stat["Metric"]["Namespace"].as_str(), Some("AWS/ApiGateway"));
        assert_eq!(stat["Metric"]["MetricName"].as_str(), Some(name));
        assert!(is_ref_to(&dimension(&stat["Metric"], "ApiId"), "LiveApi"));
    }
    let returned: Vec<_> = metrics
        .iter()
        .filter(|m| m["ReturnData"].as_bool() == Some(true))
        .collect();
    assert_eq!(
        returned.len(),
        1,
        "an alarm on metric math watches exactly one series"
    );
    let expression = returned[0]["Expression"].as_str().unwrap();
    assert!(
        expression.contains("serverErrors / requests"),
        "a share of requests: {expression}"
    );

    for (alarm, function) in [
        ("ReconcileFailingAlarm", "ReconcileFunction"),
        ("FlushCountsFailingAlarm", "FlushCountsFunction"),
    ] {
        let alarm = &resources[alarm]["Properties"];
        if function == "ReconcileFunction" {
            // Its runs follow ReconcileSchedule, so its window must be a parameter beside it.
            assert!(is_ref_to(
                &alarm["EvaluationPeriods"],
                "ReconcileAlarmWindowMinutes"
            ));
            let window = &template["Parameters"]["ReconcileAlarmWindowMinutes"];
            assert_eq!(window["Default"].as_i64(), Some(5));
            assert_eq!(
                window["MaxValue"].as_i64(),
                Some(24 * 60),
                "a one-minute period, a day at most"
            );
        }
        assert_eq!(alarm["Namespace"].as_str(), Some("AWS/Lambda"));
        assert_eq!(alarm["MetricName"].as_str(), Some("Errors"));
        assert!(is_ref_to(&dimension(alarm, "FunctionName"), function));
    }

    // A job that never runs has no errors: these fire when the whole window
    // has no invocation, a missing datapoint counting as none.
    for (alarm, function, window) in [
        ("ReconcileStoppedAlarm", "ReconcileFunction", None),
        ("FlushCountsStoppedAlarm", "FlushCountsFunction", Some(5)),
    ] {
        let alarm = &resources[alarm]["Properties"];
        assert_eq!(alarm["Namespace"].as_str(), Some("AWS/Lambda"));
        assert_eq!(alarm["MetricName"].as_str(), Some("Invocations"));
        assert!(is_ref_to(&dimension(alarm, "FunctionName"), function));
        assert_eq!(alarm["Statistic"].as_str(), Some("Sum"));
        assert_eq!(alarm["Period"].as_i64(), Some(60));
        assert_eq!(alarm["ComparisonOperator"].as_str(), Some("LessThanThreshold"));
        assert_eq!(alarm["Threshold"].as_i64(), Some(1));
        assert_eq!(alarm["TreatMissingData"].as_str(), Some("breaching"));
        for field in ["EvaluationPeriods", "DatapointsToAlarm"] {
            match window {
                Some(minutes) => assert_eq!(alarm[field].as_i64(), Some(minutes), "{field}"),
                None => assert!(
                    is_ref_to(&alarm[field], "ReconcileAlarmWindowMinutes"),
                    "{field}: the window follows the schedule"
                ),
            }
        }
    }

    let alarms: Vec<_> = resources
        .as_mapping()
        .unwrap()
        .iter()
        .filter(|(_, r)| r["Type"].as_str() == Some("AWS::CloudWatch::Alarm"))
        .collect();
    assert_eq!(alarms.len(), 5);
    for (name, alarm) in alarms {
        let properties = &alarm["Properties"];
        if properties["MetricName"].as_str() != Some("Invocations") {
            assert_eq!(
                properties["TreatMissingData"].as_str(),
                Some("notBreaching"),
                "{name:?}: a quiet stack is not an outage"
            );
        }
        for actions in ["AlarmActions", "OKActions"] {
            let Value::Tagged(condition) = &properties[actions] else {
                panic!("{name:?} {actions}: not an !If on HasAlarmTopic");
            };
            assert_eq!(condition.tag.to_string(), "!If");
            let branches = condition.value.as_sequence().unwrap();
            assert_eq!(branches[0].as_str(), Some("HasAlarmTopic"), "{name:?}");
            assert!(is_ref_to(&branches[1][0], "AlarmTopicArn"), "{name:?} {actions}");
        }
    }
}

/// Every function names its own log group, which the stack creates first:
/// the group's name refers to no resource of the stack (a name such as
/// `/aws/lambda/${Function}` would make it wait for the function, and a
/// scheduled function invoked in between would have Lambda create the group
/// itself, failing the stack with "already exists").
#[test]
fn every_function_logs_to_a_group_the_stack_creates_before_it() {
    let template = template();
    let resources = &template["Resources"];
    let mut groups = Vec::new();
    for (name, function) in functions(&template) {
        let group = &function["Properties"]["LoggingConfig"]["LogGroup"];
        let Value::Tagged(reference) = group else {
            panic!("{name}: LoggingConfig.LogGroup is not a !Ref to a log group: {group:?}");
        };
        assert_eq!(reference.tag.to_string(), "!Ref", "{name}");
        let group_name = reference.value.as_str().unwrap().to_owned();
        let resource = &resources[group_name.as_str()];
        assert_eq!(
            resource["Type"].as_str(),
            Some("AWS::Logs::LogGroup"),
            "{name} → {group_name}"
        );
        assert!(
            is_ref_to(&resource["Properties"]["RetentionInDays"], "LogRetentionDays"),
            "{group_name} keeps logs for LogRetentionDays"
        );
        let Value::Tagged(log_group_name) = &resource["Properties"]["LogGroupName"] else {
            panic!("{group_name}: LogGroupName is not a !Sub");
        };
        assert_eq!(log_group_name.tag.to_string(), "!Sub", "{group_name}");
        let pattern = log_group_name.value.as_str().unwrap();
        let variables: Vec<&str> = pattern
            .split("${")
            .skip(1)
            .map(|rest| rest.split('}').next().unwrap())
            .collect();
        assert_eq!(variables, ["AWS::StackName"], "{group_name}: {pattern}");
        groups.push(pattern.to_owned());
    }
    let count = groups.len();
    groups.sort();
    groups.dedup();
    assert_eq!(groups.len(), count, "each function has a group of its own");
    let declared = resources
        .as_mapping()
        .unwrap()
        .values()
        .filter(|r| r["Type"].as_str() == Some("AWS::Logs::LogGroup"))
        .count();
    assert_eq!(
        declared,
        count + 1,
        "no log group that nothing writes to: one per function and the API's access log"
    );
}

/// A change to the secret other than the database password reaches warm
/// containers only through a new configuration: `ConfigRevision` is in every
/// function's environment, so a new value replaces them all.
#[test]
fn a_new_config_revision_replaces_every_functions_containers() {
    let template = template();
    let variables = &template["Globals"]["Function"]["Environment"]["Variables"];
    assert!(is_ref_to(&variables["CONFIG_REVISION"], "ConfigRevision"));
    for (name, function) in functions(&template) {
        let own = &function["Properties"]["Environment"]["Variables"]["CONFIG_REVISION"];
        assert!(own.is_null(), "{name} overrides the global CONFIG_REVISION");
    }
    let parameter = &template["Parameters"]["ConfigRevision"];
    assert_eq!(parameter["Type"].as_str(), Some("String"));
    assert!(parameter["Default"].as_str().is_some(), "deploys without it");
}

/// The API logs every request, its own answers included (a route's 429, the
/// bare 500 of a throttled Lambda), as one JSON object a line, into a group
/// of this stack with the functions' retention, without any header (the
/// bearer token).
#[test]
fn the_api_logs_every_request_without_its_credentials() {
    let template = template();
    let settings = &template["Resources"]["LiveApi"]["Properties"]["AccessLogSettings"];
    let Value::Tagged(destination) = &settings["DestinationArn"] else {
        panic!("AccessLogSettings.DestinationArn is not a !GetAtt: {settings:?}");
    };
    assert_eq!(destination.tag.to_string(), "!GetAtt");
    let target = destination.value.as_str().expect("Group.Arn");
    let group = target.strip_suffix(".Arn").expect("the group's Arn");
    let resource = &template["Resources"][group]["Properties"];
    assert!(is_ref_to(&resource["RetentionInDays"], "LogRetentionDays"));
    let Value::Tagged(name) = &resource["LogGroupName"] else {
        panic!("{group}: LogGroupName is not a !Sub");
    };
    let name = name.value.as_str().unwrap();
    assert!(name.starts_with("/aws/vendedlogs/${AWS::StackName}/"), "{name}");

    let format = settings["Format"].as_str().expect("a format");
    // The variables stand inside JSON strings: the line is JSON whatever they hold.
    let line: serde_json::Value = serde_json::from_str(format).expect("the format is one JSON object");
    for field in [
        "$context.requestId",
        "$context.integration.requestId",
        "$context.routeKey",
        "$context.status",
        "$context.integrationStatus",
        "$context.integrationErrorMessage",
        "$context.responseLatency",
        "$context.identity.sourceIp",
    ] {
        assert!(
            line.as_object()
                .unwrap()
                .values()
                .any(|v| v.as_str() == Some(field)),
            "{field} is not logged: {format}"
        );
    }
    assert!(
        !format.contains("header") && !format.contains("authorizer"),
        "no credentials in the log: {format}"
    );
}

/// `SupabaseUrl`'s `AllowedPattern` accepts exactly the URLs the functions
/// accept as `SUPABASE_URL` (config.rs), so a value they would refuse at every
/// cold start is refused by the deploy instead, and a good one is never
/// refused. The pattern is checked with JSON Schema's `pattern` (ECMA-262),
/// which reads this pattern as CloudFormation's Java regular expressions do.
#[test]
fn the_supabase_url_pattern_refuses_what_the_functions_refuse() {
    let template = template();
    let pattern = template["Parameters"]["SupabaseUrl"]["AllowedPattern"]
        .as_str()
        .expect("SupabaseUrl has an AllowedPattern");
    let schema = serde_json::json!({"type": "string", "pattern": pattern});
    let validator = jsonschema::validator_for(&schema).expect("the pattern compiles");
    for url in [
        "https://abc.supabase.co",
        "https://abc.supabase.co/",
        "https://abc.supabase.co:443",
        "https://abc.supabase.co:8443/",
        "https://abc.supabase.co:65535",
        "https://abc.supabase.co:65536",
        "https://abc.supabase.co:70000",
        "https://abc.supabase.co:99999",
        "https://abc.supabase.co/auth/v1",
        "https://abc.supabase.co?x=1",
        "https://user@abc.supabase.co",
        "http://abc.supabase.co",
        "abc.supabase.co",
    ] {
        let settings = std::collections::HashMap::from([
            (
                "DATABASE_URL",
                "postgres://app:pw@db.example.com:5432/postgres?sslmode=verify-full",
            ),
            ("LIVEKIT_URL", "wss://demo.livekit.cloud"),
            ("LIVEKIT_API_KEY", "key"),
            ("LIVEKIT_API_SECRET", "livekit-secret-of-at-least-32-characters"),
            ("SUPABASE_URL", url),
        ]);
        let functions_accept =
            shared::config::Config::from_lookup(|name| settings.get(name).map(|v| (*v).to_owned())).is_ok();
        assert_eq!(
            validator.is_valid(&serde_json::json!(url)),
            functions_accept,
            "{url}: the template's pattern and the functions disagree"
        );
    }
}

/// Every function's role is bounded to what the functions do: write their
/// own log groups' streams and read the app's secret. SAM's generated roles
/// carry AWSLambdaBasicExecutionRole, which allows writing to every log group
/// of the account; the boundary takes that away.
#[test]
fn every_function_may_write_only_this_stacks_logs_and_read_only_its_secret() {
    let template = template();
    let boundary_name = "FunctionPermissionsBoundary";
    assert!(
        is_ref_to(
            &template["Globals"]["Function"]["PermissionsBoundary"],
            boundary_name
        ),
        "Globals.Function.PermissionsBoundary names the boundary"
    );
    for (name, function) in functions(&template) {
        let own = &function["Properties"]["PermissionsBoundary"];
        assert!(own.is_null(), "{name} keeps the global boundary, not {own:?}");
        assert!(
            function["Properties"]["Role"].is_null(),
            "{name}: SAM makes its role"
        );
    }
    let boundary = &template["Resources"][boundary_name];
    assert_eq!(boundary["Type"].as_str(), Some("AWS::IAM::ManagedPolicy"));
    let statements = boundary["Properties"]["PolicyDocument"]["Statement"]
        .as_sequence()
        .expect("the boundary's statements");
    let mut allowed = Vec::new();
    let mut conditional = Vec::new();
    for statement in statements {
        if let Value::Tagged(tagged) = statement {
            conditional.push(decrypt_with_the_secrets_own_key(
                &tagged.tag.to_string(),
                &tagged.value,
            ));
            continue;
        }
        assert_eq!(statement["Effect"].as_str(), Some("Allow"), "{statement:?}");
        let actions: Vec<&str> = match &statement["Action"] {
            Value::String(action) => vec![action.as_str()],
            Value::Sequence(actions) => actions.iter().filter_map(Value::as_str).collect(),
            other => panic!("Action: {other:?}"),
        };
        let resource = match &statement["Resource"] {
            Value::Tagged(tagged) => format!("{} {}", tagged.tag, tagged.value.as_str().unwrap_or("")),
            other => panic!("Resource is a !Sub or a !Ref, not {other:?}"),
        };
        for action in actions {
            assert!(!action.contains('*'), "no wildcard actions: {action}");
            allowed.push((action.to_owned(), resource.clone()));
        }
    }
    allowed.sort();
    let logs = "!Sub arn:${AWS::Partition}:logs:${AWS::Region}:${AWS::AccountId}:log-group:/aws/lambda/${AWS::StackName}/*:*";
    assert_eq!(
        allowed,
        [
            ("logs:CreateLogStream".to_owned(), logs.to_owned()),
            ("logs:PutLogEvents".to_owned(), logs.to_owned()),
            (
                "secretsmanager:GetSecretValue".to_owned(),
                "!Ref AppSecretArn".to_owned()
            ),
        ]
    );
    assert_eq!(
        conditional.len(),
        1,
        "one conditional statement: the secret's own key"
    );
    // Every function needs all of it (the secret, its key when it has one;
    // the logs are AWSLambdaBasicExecutionRole's anyway), so the boundary
    // is also the one policy each function is given: no second copy of its
    // statements to drift apart.
    for (name, function) in functions(&template) {
        let policies = function["Properties"]["Policies"]
            .as_sequence()
            .unwrap_or_else(|| panic!("{name}: Policies"));
        assert!(
            policies.len() == 1 && is_ref_to(&policies[0], boundary_name),
            "{name} is given the boundary's permissions and nothing else: {policies:?}"
        );
    }
    // The log groups the functions write to are all under that prefix
    // (every_function_logs_to_a_group_the_stack_creates_before_it).
    for (name, function) in functions(&template) {
        let group = &function["Properties"]["LoggingConfig"]["LogGroup"];
        let Value::Tagged(reference) = group else {
            panic!("{name}: {group:?}");
        };
        let group = &template["Resources"][reference.value.as_str().unwrap()];
        let Value::Tagged(group_name) = &group["Properties"]["LogGroupName"] else {
            panic!("{name}: LogGroupName is not a !Sub");
        };
        assert!(
            group_name
                .value
                .as_str()
                .is_some_and(|pattern| pattern.starts_with("/aws/lambda/${AWS::StackName}/")),
            "{name} logs where the boundary lets it"
        );
    }
}
