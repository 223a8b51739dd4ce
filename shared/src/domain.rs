//! Request and response shapes, and the value types that parse client input once
//! so the rest of the code cannot hold an invalid value.

use std::fmt;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// A LiveKit room name and the stream's id: 1–128 of `[A-Za-z0-9_-]`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct RoomName(String);

impl RoomName {
    pub const MAX_LEN: usize = 128;

    pub fn parse(raw: String) -> Result<RoomName, String> {
        let valid_chars = raw
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
        if raw.is_empty() || raw.len() > Self::MAX_LEN || !valid_chars {
            return Err(format!(
                "roomName must be 1-{} characters of A-Z, a-z, 0-9, '-' and '_'",
                Self::MAX_LEN
            ));
        }
        Ok(RoomName(raw))
    }

    /// A fresh random room name (UUID v4) for a stream started without one.
    pub fn generate() -> RoomName {
        RoomName(Uuid::new_v4().to_string())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for RoomName {
    type Error = String;
    fn try_from(raw: String) -> Result<Self, String> {
        RoomName::parse(raw)
    }
}

impl From<RoomName> for String {
    fn from(name: RoomName) -> String {
        name.0
    }
}

impl fmt::Display for RoomName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Bidirectional formatting characters: they reorder what follows them on
/// screen, so "Ada" can be drawn from other letters or a message can appear to
/// say something else (an override, an isolate, or an invisible mark).
fn is_bidi_control(c: char) -> bool {
    matches!(c, '\u{061C}' | '\u{200E}' | '\u{200F}') || is_bidi_reordering(c)
}

/// The embeddings, overrides and isolates, which reorder whole runs of text
/// ("Trojan Source", CVE-2021-42574). The marks (LRM, RLM, ALM) only settle
/// the direction of the neutral characters beside them, and right-to-left
/// writers type them, so chat keeps them.
fn is_bidi_reordering(c: char) -> bool {
    matches!(c, '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}')
}

/// Characters that draw nothing, or nothing distinguishable: with them two
/// different names look the same in the room ("Ada" and "A\u{200B}da"), or a
/// name looks empty. Unicode's whole Default_Ignorable_Code_Point set
/// (DerivedCoreProperties.txt, unassigned ranges included, as they are for
/// what later versions assign), and the blanks that set leaves out (the
/// Braille blank). Uses that draw something stay allowed and are checked on
/// their own: the zero-width joiner inside an emoji, the emoji presentation
/// selector U+FE0F ([`has_stray_emoji_mark`]), the joiner and the non-joiner
/// where they change how the letters of Indic and Arabic scripts join
/// ([`joins_letters`]), and the tags of a subdivision flag
/// ([`has_stray_tag`]).
fn is_invisible(c: char) -> bool {
    matches!(
        c,
        '\u{00AD}'
            | '\u{034F}'
            | '\u{061C}'
            | '\u{115F}'..='\u{1160}'
            | '\u{17B4}'..='\u{17B5}'
            | '\u{180B}'..='\u{180F}'
            | '\u{200B}'
            | '\u{200E}'..='\u{200F}'
            | '\u{202A}'..='\u{202E}'
            | '\u{2060}'..='\u{206F}'
            | '\u{2800}'
            | '\u{3164}'
            | '\u{FE00}'..='\u{FE0E}'
            | '\u{FEFF}'
            | '\u{FFA0}'
            | '\u{FFF0}'..='\u{FFF8}'
            | '\u{1BCA0}'..='\u{1BCA3}'
            | '\u{1D173}'..='\u{1D17A}'
            | '\u{E0000}'..='\u{E001F}'
            | '\u{E0080}'..='\u{E0FFF}'
    )
}

const BLACK_FLAG: char = '\u{1F3F4}';
const CANCEL_TAG: char = '\u{E007F}';
const EMOJI_PRESENTATION: char = '\u{FE0F}';
const ZERO_WIDTH_JOINER: char = '\u{200D}';
const ZERO_WIDTH_NON_JOINER: char = '\u{200C}';
const KEYCAP: char = '\u{20E3}';

fn is_tag(c: char) -> bool {
    ('\u{E0020}'..='\u{E007E}').contains(&c)
}

/// The subdivision flags Unicode recommends (RGI): England, Scotland, Wales.
/// Any other tag sequence draws as a plain black flag whatever it spells.
const FLAG_TAGS: [&str; 3] = ["gbeng", "gbsct", "gbwls"];

/// A tag character (U+E0020–E007F) outside one of the [`FLAG_TAGS`] flags
/// ("🏴", the tags, the cancel tag): anywhere else, or spelling anything
/// else, tags draw nothing and carry hidden text.
fn has_stray_tag(text: &str) -> bool {
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        if c == BLACK_FLAG {
            let mut spelled = String::new();
            while let Some(tag) = chars.next_if(|&next| is_tag(next)) {
                spelled.push(char::from_u32(u32::from(tag) - 0xE0000).unwrap_or('?'));
            }
            if !spelled.is_empty()
                && (chars.next_if_eq(&CANCEL_TAG).is_none() || !FLAG_TAGS.contains(&spelled.as_str()))
            {
                return true;
            }
        } else if is_tag(c) || c == CANCEL_TAG {
            return true;
        }
    }
    false
}

/// A pictograph an emoji sequence is built of: any non-ASCII character with
/// Unicode's Emoji property (the ASCII ones are the digits, `#` and `*`).
fn is_pictograph(c: char) -> bool {
    use unicode_properties::UnicodeEmoji;
    !c.is_ascii() && c.is_emoji_char()
}

/// Whether `c` draws as text unless U+FE0F follows it ("❤" and "❤️"); after
/// any other character U+FE0F changes nothing on screen.
fn takes_emoji_presentation(c: char) -> bool {
    use unicode_properties::{EmojiStatus, UnicodeEmoji};
    matches!(
        c.emoji_status(),
        EmojiStatus::EmojiOther | EmojiStatus::EmojiModifierBase | EmojiStatus::EmojiOtherAndEmojiComponent
    )
}

/// A zero-width joiner, a non-joiner or U+FE0F where it draws nothing:
/// "A\u{FE0F}da" and "A\u{200D}da" look like "Ada". The joiner may join two
/// pictographs ("👩‍💻", "🏳️‍🌈"); U+FE0F may follow a pictograph (after one
/// that is drawn as text by default, "❤" and "❤️", it changes the drawing;
/// after the others it is what phone keyboards type: "⚽️"), and a digit,
/// `#` or `*` only as a keycap ("#️⃣"). Both joiners may also stand where
/// letters join ([`joins_letters`]).
fn has_stray_emoji_mark(text: &str) -> bool {
    let chars: Vec<char> = text.chars().collect();
    chars.iter().enumerate().any(|(i, &c)| {
        let before = i.checked_sub(1).and_then(|j| chars.get(j)).copied();
        let after = chars.get(i + 1).copied();
        match c {
            ZERO_WIDTH_JOINER => {
                let joined_after = before.is_some_and(|b| is_pictograph(b) || b == EMOJI_PRESENTATION);
                let joins_emoji = joined_after && after.is_some_and(is_pictograph);
                !(joins_emoji || joins_letters(&chars, i))
            }
            ZERO_WIDTH_NON_JOINER => !joins_letters(&chars, i),
            EMOJI_PRESENTATION => match before {
                Some(b) if b.is_ascii() => !(takes_emoji_presentation(b) && after == Some(KEYCAP)),
                Some(b) => !is_pictograph(b),
                None => true,
            },
            _ => false,
        }
    })
}

/// Whether the joiner or non-joiner at `chars[at]` is one the script needs,
/// by the rule IDNA uses for the same reason (RFC 5892, appendix A.1 and
/// A.2, "CONTEXTJ"): either after a virama ("ශ්‍රී": the joiner picks a
/// conjunct's form in Sinhala and other Indic scripts), or, for the
/// non-joiner only, between a letter that joins to the next one and a
/// letter that joins to the previous one, marks between them aside (the
/// Persian "می‌خواهم": it keeps two letters that would join apart).
/// Anywhere else it changes nothing on screen.
fn joins_letters(chars: &[char], at: usize) -> bool {
    use icu_properties::CodePointMapData;
    use icu_properties::props::{CanonicalCombiningClass, JoiningType};
    let Some(before) = at.checked_sub(1).map(|i| &chars[..=i]) else {
        return false;
    };
    let combining_class = CodePointMapData::<CanonicalCombiningClass>::new();
    if before
        .last()
        .is_some_and(|&c| combining_class.get(c) == CanonicalCombiningClass::Virama)
    {
        return true;
    }
    if chars[at] != ZERO_WIDTH_NON_JOINER {
        return false;
    }
    let joining = CodePointMapData::<JoiningType>::new();
    let first_joining = |letters: &mut dyn Iterator<Item = &char>| {
        letters
            .map(|&c| joining.get(c))
            .find(|&kind| kind != JoiningType::Transparent)
    };
    let joins_forward = matches!(
        first_joining(&mut before.iter().rev()),
        Some(JoiningType::LeftJoining | JoiningType::DualJoining)
    );
    let joins_backward = matches!(
        first_joining(&mut chars[at + 1..].iter()),
        Some(JoiningType::RightJoining | JoiningType::DualJoining)
    );
    joins_forward && joins_backward
}

/// Controls, and the line and paragraph separators: names and titles are one
/// line.
fn is_control_or_line_break(c: char) -> bool {
    c.is_control() || matches!(c, '\u{2028}' | '\u{2029}')
}

/// Checks `raw` as sent (its length in characters, no control characters:
/// what the API's schema states) and returns it trimmed, refusing what is
/// only spaces. These strings are shown to other users as who someone is or
/// what a stream is: control characters, bidirectional overrides and
/// invisible characters are refused, so nobody can pass for somebody else in
/// the room's UI.
fn trimmed_text(raw: &str, field: &str, max_chars: usize) -> Result<String, String> {
    let trimmed = raw.trim();
    if trimmed.is_empty() || raw.chars().count() > max_chars {
        return Err(format!(
            "{field} must be 1-{max_chars} characters and not only spaces"
        ));
    }
    if raw.chars().any(is_control_or_line_break) {
        return Err(format!(
            "{field} must not contain control characters or line breaks"
        ));
    }
    if trimmed.chars().any(is_bidi_control) {
        return Err(format!(
            "{field} must not contain bidirectional formatting characters"
        ));
    }
    if trimmed.chars().any(is_invisible) || has_stray_emoji_mark(trimmed) || has_stray_tag(trimmed) {
        return Err(format!("{field} must not contain invisible characters"));
    }
    Ok(trimmed.to_owned())
}

/// A stream title: 1–200 characters, not only spaces, stored trimmed.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub struct Title(String);

impl Title {
    pub const MAX_CHARS: usize = 200;

    pub fn parse(raw: &str) -> Result<Title, String> {
        trimmed_text(raw, "title", Self::MAX_CHARS).map(Title)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for Title {
    type Error = String;
    fn try_from(raw: String) -> Result<Self, String> {
        Title::parse(&raw)
    }
}

/// The display name shown in the room: 1–64 characters, not only spaces,
/// stored trimmed.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub struct ParticipantName(String);

impl ParticipantName {
    pub const MAX_CHARS: usize = 64;

    pub fn parse(raw: &str) -> Result<ParticipantName, String> {
        trimmed_text(raw, "participantName", Self::MAX_CHARS).map(ParticipantName)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for ParticipantName {
    type Error = String;
    fn try_from(raw: String) -> Result<Self, String> {
        ParticipantName::parse(&raw)
    }
}

/// A chat message's text: 1–500 characters, not only spaces, stored
/// trimmed; newlines are allowed, other control characters are not.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub struct ChatText(String);

impl ChatText {
    pub const MAX_CHARS: usize = 500;

    pub fn parse(raw: &str) -> Result<ChatText, String> {
        let trimmed = raw.trim();
        if trimmed.is_empty() || raw.chars().count() > Self::MAX_CHARS {
            return Err(format!(
                "text must be 1-{} characters and not only spaces",
                Self::MAX_CHARS
            ));
        }
        if raw.chars().any(|c| c.is_control() && c != '\n') {
            return Err("text must not contain control characters other than newline".into());
        }
        // Overrides make a message read differently from what it says; other
        // invisible characters are harmless in chat and common in pasted text.
        if trimmed.chars().any(is_bidi_reordering) {
            return Err("text must not contain bidirectional embeddings, overrides or isolates".into());
        }
        Ok(ChatText(trimmed.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for ChatText {
    type Error = String;
    fn try_from(raw: String) -> Result<Self, String> {
        ChatText::parse(&raw)
    }
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ChatRequest {
    pub room_name: RoomName,
    pub text: ChatText,
    /// The message's id, made by the app once per message and sent on every
    /// attempt, so a retry whose first attempt was stored is not stored twice.
    #[serde(default)]
    pub id: Option<Uuid>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ModerationRequest {
    pub room_name: RoomName,
    pub user_id: Uuid,
    pub action: ModerationAction,
}

/// What the streamer may do to a participant.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ModerationAction {
    Kick,
    Ban,
    Unban,
    Mute,
    Unmute,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct StartRequest {
    pub title: Title,
    #[serde(default)]
    pub room_name: Option<RoomName>,
    #[serde(default)]
    pub participant_name: Option<ParticipantName>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TokenRequest {
    pub room_name: RoomName,
    pub participant_name: ParticipantName,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct EndRequest {
    pub room_name: RoomName,
}

/// `POST /live/stage/hand`: the caller raises or lowers their hand.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HandRequest {
    pub room_name: RoomName,
    pub raised: bool,
}

/// `POST /live/stage/invite`: the streamer invites a viewer on stage.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct InviteRequest {
    pub room_name: RoomName,
    pub user_id: Uuid,
}

/// `POST /live/stage/accept` and `/decline`: the invitee answers.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct StageAnswerRequest {
    pub room_name: RoomName,
}

/// `POST /live/stage/remove`: the streamer takes a guest off the stage (or
/// withdraws an invitation); a guest leaves by naming themselves or no one.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct StageRemoveRequest {
    pub room_name: RoomName,
    #[serde(default)]
    pub user_id: Option<Uuid>,
}

/// `POST /live/reactions`.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ReactionRequest {
    pub room_name: RoomName,
    pub kind: crate::store::reactions::ReactionKind,
}

crate::json_body!(
    StartRequest,
    TokenRequest,
    EndRequest,
    ChatRequest,
    ModerationRequest,
    HandRequest,
    InviteRequest,
    StageAnswerRequest,
    StageRemoveRequest,
    ReactionRequest
);

/// A stream as clients see it.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Stream {
    pub id: RoomName,
    pub title: String,
    pub streamer_id: Uuid,
    pub is_live: bool,
    pub viewer_count: i32,
    #[serde(serialize_with = "crate::domain::timestamp::serialize")]
    pub created_at: DateTime<Utc>,
    /// `null` while live.
    #[serde(serialize_with = "crate::domain::timestamp::serialize_option")]
    pub ended_at: Option<DateTime<Utc>>,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct StartResponse {
    pub stream: Stream,
    pub token: String,
    pub server_url: String,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct TokenResponse {
    pub token: String,
    pub server_url: String,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct EndedStream {
    pub id: RoomName,
    pub is_live: bool,
    #[serde(serialize_with = "crate::domain::timestamp::serialize")]
    pub ended_at: DateTime<Utc>,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct EndResponse {
    pub success: bool,
    pub stream: EndedStream,
    /// False when LiveKit could not be reached: the stream has ended, and calling
    /// `/live/end` again retries closing the room.
    pub room_closed: bool,
}

/// Timestamps as clients get them: RFC 3339 in UTC with exactly six
/// fractional digits, Postgres's microseconds. chrono's own format drops
/// trailing zero groups (`…:46Z` on a whole second, `…:46.837Z` on a whole
/// millisecond), which a strict parser of one format (Swift's
/// `ISO8601DateFormatter` with fractional seconds, a schema with a fixed
/// precision) refuses about once in a thousand values.
pub mod timestamp {
    use chrono::{DateTime, SecondsFormat, Utc};
    use serde::Serializer;

    pub fn serialize<S: Serializer>(at: &DateTime<Utc>, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&at.to_rfc3339_opts(SecondsFormat::Micros, true))
    }

    pub fn serialize_option<S: Serializer>(
        at: &Option<DateTime<Utc>>,
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        match at {
            Some(at) => serialize(at, serializer),
            None => serializer.serialize_none(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn room_names_allow_only_the_livekit_safe_alphabet() {
        assert!(RoomName::parse("stream-abc_123".into()).is_ok());
        assert!(RoomName::parse("a".repeat(128)).is_ok());
        for bad in ["", "has space", "slash/es", "dot.ted", "émoji", &"a".repeat(129)] {
            assert!(RoomName::parse(bad.into()).is_err(), "{bad:?}");
        }
    }

    /// Every timestamp has six fractional digits, on a whole second and a
    /// whole millisecond too, where chrono's own format would drop them.
    #[test]
    fn timestamps_always_have_six_fractional_digits() {
        let at = |text: &str| DateTime::parse_from_rfc3339(text).unwrap().with_timezone(&Utc);
        let stream = Stream {
            id: RoomName::parse("r".into()).unwrap(),
            title: "t".into(),
            streamer_id: Uuid::nil(),
            is_live: false,
            viewer_count: 0,
            created_at: at("2026-11-26T10:23:46Z"),
            ended_at: Some(at("2026-11-26T11:00:00.837+00:00")),
        };
        let json = serde_json::to_value(&stream).unwrap();
        assert_eq!(json["createdAt"], "2026-11-26T10:23:46.000000Z");
        assert_eq!(json["endedAt"], "2026-11-26T11:00:00.837000Z");
        let live = Stream {
            ended_at: None,
            ..stream
        };
        assert_eq!(
            serde_json::to_value(&live).unwrap()["endedAt"],
            serde_json::Value::Null
        );
        let ended = EndedStream {
            id: live.id,
            is_live: false,
            ended_at: at("2026-11-26T11:00:00.123456Z"),
        };
        assert_eq!(
            serde_json::to_value(&ended).unwrap()["endedAt"],
            "2026-11-26T11:00:00.123456Z"
        );
    }

    #[test]
    fn generated_room_names_are_valid_uuids() {
        let name = RoomName::generate();
        assert!(Uuid::parse_str(name.as_str()).is_ok());
        assert!(RoomName::parse(name.to_string()).is_ok());
    }

    #[test]
    fn titles_are_trimmed_and_counted_in_characters() {
        assert_eq!(
            Title::parse("  Learning Yoruba Today!  ").unwrap().as_str(),
            "Learning Yoruba Today!"
        );
        assert!(Title::parse(&"é".repeat(200)).is_ok());
        assert!(Title::parse(&"é".repeat(201)).is_err());
        assert!(Title::parse("   ").is_err());
        assert!(Title::parse("bell\u{7}").is_err());
    }

    /// The limits hold on the value as sent, as the API's schema states them
    /// (a body the schema refuses is refused here too): a line break or a tab
    /// is refused even where trimming would remove it, and the length counts
    /// the surrounding spaces.
    #[test]
    fn text_limits_hold_on_the_value_as_sent() {
        for bad in ["Live\n", "\tLive", "Live\u{85}"] {
            assert!(Title::parse(bad).is_err(), "{bad:?}");
            assert!(ParticipantName::parse(bad).is_err(), "{bad:?}");
        }
        assert!(Title::parse(&format!(" {} ", "x".repeat(198))).is_ok());
        assert!(Title::parse(&format!(" {} ", "x".repeat(199))).is_err());
        assert!(ChatText::parse("\thello").is_err());
        assert_eq!(ChatText::parse("hello\n").unwrap().as_str(), "hello");
        assert!(ChatText::parse(&format!("{}\n", "x".repeat(500))).is_err());
    }

    #[test]
    fn chat_text_allows_newlines_but_no_other_control_characters() {
        assert_eq!(
            ChatText::parse("  hello\nworld  ").unwrap().as_str(),
            "hello\nworld"
        );
        assert!(ChatText::parse(&"é".repeat(500)).is_ok());
        assert!(ChatText::parse(&"é".repeat(501)).is_err());
        assert!(ChatText::parse(" \n ").is_err());
        for bad in ["tab\there", "bell\u{7}", "nul\u{0}", "cr\rlf"] {
            assert!(ChatText::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn participant_names_are_1_to_64_characters() {
        assert_eq!(ParticipantName::parse(" Ada ").unwrap().as_str(), "Ada");
        assert!(ParticipantName::parse(&"x".repeat(64)).is_ok());
        assert!(ParticipantName::parse(&"x".repeat(65)).is_err());
        assert!(ParticipantName::parse("").is_err());
    }

    #[test]
    fn names_and_titles_refuse_what_lets_one_user_pass_for_another() {
        for bad in [
            "Ada\u{202E}nimda",            // right-to-left override
            "\u{2067}Ada\u{2069}",         // isolate
            "A\u{200B}da",                 // zero-width space
            "Ada\u{200C}",                 // zero-width non-joiner
            "A\u{2060}da",                 // word joiner
            "\u{FEFF}Ada",                 // byte order mark
            "Ad\u{00AD}a",                 // soft hyphen
            "\u{3164}",                    // Hangul filler: a name that looks empty
            "A\u{200D}da",                 // a joiner between letters
            "Ada\u{200F}",                 // right-to-left mark
            "A\u{206F}da",                 // nominal digit shapes (deprecated format)
            "Ada\u{E0100}",                // variation selector 17
            "A\u{E0041}da",                // a tag outside a flag: hidden text
            "\u{1F3F4}\u{E0067}\u{E0062}", // a flag's tags without the cancel tag
            "A\u{180B}da",                 // Mongolian free variation selector
            "A\u{1D173}da",                // musical symbol begin beam
            "\u{2800}",                    // Braille blank: a name that looks empty
            "Ada\u{2028}Admin",            // line separator
            "Ada\u{2029}Admin",            // paragraph separator
            "A\u{FE0F}da",                 // U+FE0F after a letter draws nothing
            "Ada1\u{FE0F}",                // after a digit, only as a keycap
            "\u{2764}\u{FE0F}\u{FE0F}",    // twice
            "Ada!\u{200D}!",               // a joiner between punctuation
            "Ada \u{1F469}\u{200D}",       // a joiner at the end
            "\u{0627}\u{200C}\u{062F}",    // a non-joiner between letters that do not join (alef, dal)
            "\u{0915}\u{200C}",            // after a consonant, not a virama
            "\u{200C}\u{0628}",            // at the start
            // A flag's tags spelling hidden text ("ignore") behind a black flag.
            "\u{1F3F4}\u{E0069}\u{E0067}\u{E006E}\u{E006F}\u{E0072}\u{E0065}\u{E007F}",
        ] {
            assert!(ParticipantName::parse(bad).is_err(), "{bad:?}");
            assert!(Title::parse(bad).is_err(), "{bad:?}");
        }
        for good in [
            "Adé Ọlá",
            "李小龙",
            "محمد",
            "Ada 👩\u{200D}💻",
            "👨\u{200D}👩\u{200D}👧 family",
            "Ada \u{2764}\u{FE0F}",
            // The flag of Scotland: the black flag, the tags "gbsct", the cancel tag.
            "Ada \u{1F3F4}\u{E0067}\u{E0062}\u{E0073}\u{E0063}\u{E0074}\u{E007F}",
            "Ada \u{1F3F4}",
            "#\u{FE0F}\u{20E3} 1\u{FE0F}\u{20E3}", // keycaps
            "\u{1F3F3}\u{FE0F}\u{200D}\u{1F308}",  // rainbow flag
            "\u{1F469}\u{1F3FD}\u{200D}\u{1F4BB}", // a skin tone, then a joiner
            "\u{2764}\u{FE0F}\u{200D}\u{1F525}",   // heart on fire
            "\u{1F3F4}\u{200D}\u{2620}\u{FE0F}",   // pirate flag
            "\u{1F3F4}\u{E0067}\u{E0062}\u{E0077}\u{E006C}\u{E0073}\u{E007F}", // Wales
            // What phone keyboards type: U+FE0F after emoji drawn as such anyway.
            "Match day \u{26BD}\u{FE0F}",
            "Ada \u{2B50}\u{FE0F}\u{26A1}\u{FE0F}\u{2615}\u{FE0F}",
            "\u{1F980}\u{FE0F}",
            // Persian: a non-joiner keeps "می" apart from "خواهم" (mim-ye, then kha).
            "\u{0645}\u{06CC}\u{200C}\u{062E}\u{0648}\u{0627}\u{0647}\u{0645}",
            // Sinhala "Sri": sha, virama, joiner, ra, ii.
            "\u{0DC1}\u{0DCA}\u{200D}\u{0DBB}\u{0DD3} Lanka",
            // Hindi: ka, virama, non-joiner, ssa (a half form instead of a conjunct).
            "\u{0915}\u{094D}\u{200C}\u{0937}",
        ] {
            assert!(ParticipantName::parse(good).is_ok(), "{good:?}");
            assert!(Title::parse(good).is_ok(), "{good:?}");
        }
        assert!(ChatText::parse("look \u{202E}txt.exe").is_err());
        assert!(ChatText::parse("\u{2067}isolated\u{2069}").is_err());
        assert!(ChatText::parse("a\u{200B}b is fine in chat").is_ok());
        // Right-to-left writers' marks (here an RLM before the digits).
        assert!(ChatText::parse("\u{05E9}\u{05DC}\u{05D5}\u{05DD} \u{200F}123").is_ok());
    }

    #[test]
    fn unknown_fields_and_wrong_types_are_rejected() {
        let err = serde_json::from_str::<EndRequest>(r#"{"roomName":"a","extra":1}"#).unwrap_err();
        assert!(err.to_string().contains("unknown field `extra`"), "{err}");
        let err =
            serde_json::from_str::<TokenRequest>(r#"{"roomName":5,"participantName":"x"}"#).unwrap_err();
        assert!(err.to_string().contains("invalid type"), "{err}");
    }
}
