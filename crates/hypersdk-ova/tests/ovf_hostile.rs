//! Hostile and malformed descriptors: refused with a position, never expanded.

use hypersdk_core::ErrorKind;
use hypersdk_ova::ovf::{Envelope, ParseOptions};

fn err(xml: &[u8]) -> String {
    let e = Envelope::parse(xml).expect_err("must be refused");
    assert_eq!(e.kind(), ErrorKind::InvalidData, "{e}");
    e.to_string()
}

const MINIMAL: &str = r#"<Envelope xmlns="http://schemas.dmtf.org/ovf/envelope/1" xmlns:ovf="http://schemas.dmtf.org/ovf/envelope/1"><References/><VirtualSystem ovf:id="a"><Info>x</Info></VirtualSystem></Envelope>"#;

#[test]
fn minimal_is_accepted() {
    let env = Envelope::parse(MINIMAL.as_bytes()).expect("minimal");
    assert_eq!(env.virtual_systems().len(), 1);
}

#[test]
fn billion_laughs_is_refused_without_expansion() {
    let xml = r#"<?xml version="1.0"?>
<!DOCTYPE lolz [
 <!ENTITY lol "lol">
 <!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">
 <!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;">
 <!ENTITY lol9 "&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;">
]>
<Envelope xmlns="http://schemas.dmtf.org/ovf/envelope/1"><Info>&lol9;</Info></Envelope>"#;
    let m = err(xml.as_bytes());
    assert!(m.contains("DOCTYPE is not allowed"), "{m}");
    assert!(m.contains("line 2, column 1"), "{m}");
}

#[test]
fn external_entity_is_refused() {
    let xml = r#"<!DOCTYPE x SYSTEM "file:///etc/passwd"><Envelope xmlns="http://schemas.dmtf.org/ovf/envelope/1"/>"#;
    assert!(err(xml.as_bytes()).contains("DOCTYPE"));
}

#[test]
fn undefined_entity_is_refused_with_position() {
    let xml = "<Envelope xmlns=\"http://schemas.dmtf.org/ovf/envelope/1\">\n  <Info>&xxe;</Info></Envelope>";
    let m = err(xml.as_bytes());
    assert!(m.contains("undefined entity &xxe;"), "{m}");
    assert!(m.contains("line 2"), "{m}");
}

#[test]
fn predefined_and_character_references_are_resolved() {
    let xml = MINIMAL.replace(
        "<Info>x</Info>",
        "<Info>a &amp; b &lt;c&gt; &#233;&#x4E2D;</Info><Name>q&quot;&apos;</Name>",
    );
    let env = Envelope::parse(xml.as_bytes()).expect("parse");
    let vs = env.virtual_systems()[0];
    assert_eq!(vs.info.as_deref(), Some("a & b <c> é中"));
    assert_eq!(vs.name.as_deref(), Some("q\"'"));
}

#[test]
fn depth_limit() {
    let mut xml = String::from(r#"<Envelope xmlns="http://schemas.dmtf.org/ovf/envelope/1">"#);
    for _ in 0..100 {
        xml.push_str("<a>");
    }
    for _ in 0..100 {
        xml.push_str("</a>");
    }
    xml.push_str("</Envelope>");
    let m = err(xml.as_bytes());
    assert!(m.contains("element nesting deeper than 64"), "{m}");
    assert!(m.contains("line 1, column "), "{m}");
    // A configured limit applies; a generous one accepts.
    let e = Envelope::parse_with(MINIMAL.as_bytes(), &ParseOptions::default().max_depth(2))
        .expect_err("depth 3 > 2");
    assert!(e.to_string().contains("deeper than 2"), "{e}");
    Envelope::parse_with(xml.as_bytes(), &ParseOptions::default().max_depth(200)).expect("deep ok");
}

#[test]
fn size_limit() {
    let big = format!("{MINIMAL}{}", " ".repeat(17 << 20));
    let m = err(big.as_bytes());
    assert!(m.contains("descriptor larger than 16 MiB"), "{m}");
    let e = Envelope::parse_with(MINIMAL.as_bytes(), &ParseOptions::default().max_bytes(64))
        .expect_err("too big");
    assert!(e.to_string().contains("larger than 64 bytes"), "{e}");
}

#[test]
fn unclosed_tag_reports_line_and_column() {
    let xml = "<Envelope xmlns=\"http://schemas.dmtf.org/ovf/envelope/1\">\n  <References>\n    <File ovf:id=\"a\"\n";
    let m = err(xml.as_bytes());
    assert!(m.contains("line "), "{m}");
    assert!(m.contains("column "), "{m}");
    let xml =
        "<Envelope xmlns=\"http://schemas.dmtf.org/ovf/envelope/1\">\n  <References>\n</Envelope>";
    let m = err(xml.as_bytes());
    assert!(m.contains("line 3, column 1"), "{m}");
    let xml = "<Envelope xmlns=\"http://schemas.dmtf.org/ovf/envelope/1\">\n  <References>\n";
    let m = err(xml.as_bytes());
    assert!(
        m.contains("<References> opened at line 2, column 3 is not closed"),
        "{m}"
    );
}

#[test]
fn not_an_envelope() {
    let m = err(br#"<foo xmlns="urn:x"/>"#);
    assert!(
        m.contains("not an OVF envelope: root element is {urn:x}foo"),
        "{m}"
    );
    assert!(m.contains("line 1, column 1"), "{m}");
    let m = err(br#"<Envelope xmlns="http://example.com/ovf/envelope/1"/>"#);
    assert!(
        m.contains("root element is {http://example.com/ovf/envelope/1}Envelope"),
        "{m}"
    );
    let m = err(b"<Envelope/>");
    assert!(m.contains("root element is Envelope"), "{m}");
    // The prefix does not matter, the URI does.
    Envelope::parse(br#"<x:Envelope xmlns:x="http://schemas.dmtf.org/ovf/envelope/2"/>"#)
        .expect("any prefix");
}

#[test]
fn garbage_and_bad_encoding() {
    let m = err(b"");
    assert!(m.contains("no root element"), "{m}");
    let m = err(b"hello");
    assert!(m.contains("line 1, column 1"), "{m}");
    let m = err(b"<Envelope xmlns=\"http://schemas.dmtf.org/ovf/envelope/1\">\n\xff</Envelope>");
    assert!(
        m.contains("line 2, column 1: the descriptor is not valid UTF-8"),
        "{m}"
    );
    let m = err(b"\xff\xfe<\x00");
    assert!(m.contains("UTF-16"), "{m}");
    let m = err(format!("{MINIMAL}<second/>").as_bytes());
    assert!(m.contains("second root"), "{m}");
    let m = err(br#"<Envelope xmlns="http://schemas.dmtf.org/ovf/envelope/1"><p:x/></Envelope>"#);
    assert!(m.contains("prefix 'p' is not declared"), "{m}");
}

#[test]
fn bad_numbers_in_references_are_refused() {
    let xml = MINIMAL.replace(
        "<References/>",
        "<References>\n<File ovf:id=\"f\" ovf:href=\"a.vmdk\" ovf:size=\"12x\"/></References>",
    );
    let m = err(xml.as_bytes());
    assert!(m.contains("line 2, column 1"), "{m}");
    assert!(m.contains("ovf:size=\"12x\""), "{m}");
    let xml = MINIMAL.replace(
        "<References/>",
        "<References><File ovf:id=\"f\"/></References>",
    );
    assert!(err(xml.as_bytes()).contains("File without ovf:href"));
}
