//! Bad input: errors name the file and the place; nothing that looks finished is left behind.

use std::io::Read;
use std::path::Path;

use r1s_corpus::{CorpusError, IngestOptions, Location};

use crate::common::*;

fn decompressed() -> Vec<u8> {
    let mut xml = Vec::new();
    bzip2::read::MultiBzDecoder::new(std::fs::File::open(dump()).unwrap()).read_to_end(&mut xml).unwrap();
    xml
}

fn only_input_left(dir: &Path, input: &str) {
    let names: Vec<String> =
        std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    assert_eq!(names, vec![input.to_owned()], "a failed run left files behind");
}

#[test]
fn truncated_bz2_is_an_error_and_leaves_no_output() {
    let dir = tempfile::tempdir().unwrap();
    let bytes = std::fs::read(dump()).unwrap();
    let cut = dir.path().join("cut.xml.bz2");
    std::fs::write(&cut, &bytes[..bytes.len() / 2]).unwrap();
    let err = run(std::slice::from_ref(&cut), &dir.path().join("out"), &opts()).unwrap_err();
    let msg = err.to_string();
    assert!(msg.contains("cut.xml.bz2") && msg.contains("truncated"), "{msg}");
    assert!(msg.contains("compressed byte"), "{msg}");
    only_input_left(dir.path(), "cut.xml.bz2");
}

#[test]
fn truncated_xml_names_the_page_and_offset() {
    let dir = tempfile::tempdir().unwrap();
    let xml = decompressed();
    let cut = dir.path().join("cut.xml");
    std::fs::write(&cut, &xml[..300_000]).unwrap();
    match run(&[cut], &dir.path().join("out"), &opts()).unwrap_err() {
        CorpusError::BadInput { at: Location::Byte(b), message, .. } => {
            assert!(b <= 300_000, "{b}");
            assert!(message.contains("truncated"), "{message}");
        }
        other => panic!("unexpected {other}"),
    }
    only_input_left(dir.path(), "cut.xml");
}

#[test]
fn broken_xml_gives_the_byte_offset() {
    let dir = tempfile::tempdir().unwrap();
    let xml = String::from_utf8(decompressed()).unwrap();
    let at = xml.find("<title>Anarchism</title>").unwrap();
    let broken = xml.replacen("<title>Anarchism</title>", "<title>Anarchism</titel>", 1);
    let path = dir.path().join("broken.xml");
    std::fs::write(&path, broken).unwrap();
    match run(&[path], &dir.path().join("out"), &opts()).unwrap_err() {
        CorpusError::BadInput { at: Location::Byte(b), message, path } => {
            assert!(path.ends_with("broken.xml"));
            assert!((at as u64..at as u64 + 40).contains(&b), "offset {b}, tag at {at}");
            assert!(message.contains("titel"), "{message}");
        }
        other => panic!("unexpected {other}"),
    }
    only_input_left(dir.path(), "broken.xml");
}

#[test]
fn invalid_utf8_in_xml_gives_the_byte_offset() {
    let dir = tempfile::tempdir().unwrap();
    let mut xml = decompressed();
    let at = xml.windows(10).position(|w| w == b"Anarchism ").unwrap() + 300;
    xml[at] = 0xFF;
    let path = dir.path().join("bad.xml");
    std::fs::write(&path, xml).unwrap();
    let err = run(&[path], &dir.path().join("out"), &opts()).unwrap_err();
    match err {
        CorpusError::BadInput { at: Location::Byte(b), ref message, .. } => {
            assert!(message.contains("UTF-8"), "{err}");
            assert_eq!(b, at as u64, "{err}");
        }
        other => panic!("unexpected {other}"),
    }
}

#[test]
fn bad_jsonl_lines_name_the_line_and_skip_bad_counts_them() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.jsonl");
    let mut data = b"{\"id\": \"0\", \"contents\": \"\\\"A\\\"\\nfine\"}\n".to_vec();
    data.extend_from_slice(b"{\"id\": \"1\", \"contents\": \"\\\"B\\\"\\nfine\"}\n");
    data.extend_from_slice(b"this is not json\n");
    data.extend_from_slice(b"{\"id\": \"3\", \"contents\": \"bad \xff utf8\"}\n");
    data.extend_from_slice(b"{\"id\": \"4\", \"contents\": \"\\\"C\\\"\\nfine\"}\n");
    std::fs::write(&path, data).unwrap();
    let o = IngestOptions { format: r1s_corpus::Format::SearchR1Jsonl, ..opts() };
    match run(std::slice::from_ref(&path), &dir.path().join("out"), &o).unwrap_err() {
        CorpusError::BadInput { at: Location::Line(3), path: p, .. } => assert_eq!(p, path),
        other => panic!("unexpected {other}"),
    }
    assert!(!dir.path().join("out").exists());
    let o = IngestOptions { skip_bad: true, ..o };
    let c = ingest_ok(&[path], &dir.path().join("out"), &o);
    assert_eq!(c.manifest.counts.bad_records, 2);
    assert_eq!(c.docstore.len(), 3);
}

#[test]
fn tsv_row_with_missing_fields() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("p.tsv");
    std::fs::write(&path, "id\ttext\ttitle\n1\tok\tT\n2\tmissing title\n").unwrap();
    let err = run(&[path], &dir.path().join("out"), &opts()).unwrap_err();
    assert!(matches!(err, CorpusError::BadInput { at: Location::Record { line: 3, byte: 21 }, .. }), "{err}");
    assert!(err.to_string().contains("p.tsv: line 3 (byte 21)"), "{err}");
}

/// A DPR TSV whose quoted text field held a newline aborted ingest ("line 6: expected 3
/// tab-separated fields, found 2"): lines were split by hand. Every record must come out as Python's
/// `csv.reader(f, delimiter="\t")` yields it (the expected values were printed by Python 3): doubled
/// quotes, quoted tabs and newlines, a `"` inside an unquoted field, text after a closing quote, CRLF,
/// blank lines, extra fields; a short record is named by its first line and byte offset, and
/// `--skip-bad` counts it.
#[test]
fn dpr_tsv_with_a_quoted_newline_reads_as_python_csv() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("psgs_w100.tsv");
    let data = "id\ttext\ttitle\r\n1\t\"Aaron Aaron ( or ; \"\"Ahärôn\"\") is a prophet\"\tAaron\r\n2\t\"a quoted\ttab and a\nnewline inside\"\tQuoted\n3\tan unquoted \"quote\" inside\tUnq\n4\t\"closing quote then\"more\tAfter\n\n5\t\"spans\n\nthree lines\"\tLines\n6\tplain\tT\textra field\n7\tmissing title\n8\tlast\tL";
    std::fs::write(&path, data).unwrap();
    let err = run(std::slice::from_ref(&path), &dir.path().join("out"), &opts()).unwrap_err();
    assert!(matches!(err, CorpusError::BadInput { at: Location::Record { line: 12, byte: 235 }, .. }), "{err}");
    assert!(err.to_string().contains("found 2"), "{err}");
    let o = IngestOptions { skip_bad: true, ..opts() };
    let c = ingest_ok(&[path], &dir.path().join("out"), &o);
    assert_eq!(c.manifest.counts.bad_records, 1);
    let got: Vec<(String, String, String)> = (0..c.docstore.len())
        .map(|r| {
            let p = c.docstore.get(r).unwrap();
            (p.id.to_owned(), p.text.to_owned(), p.title.to_owned())
        })
        .collect();
    let want = [
        ("1", "Aaron Aaron ( or ; \"Ahärôn\") is a prophet", "Aaron"),
        ("2", "a quoted\ttab and a\nnewline inside", "Quoted"),
        ("3", "an unquoted \"quote\" inside", "Unq"),
        ("4", "closing quote thenmore", "After"),
        ("5", "spans\n\nthree lines", "Lines"),
        ("6", "plain", "T"),
        ("8", "last", "L"),
    ];
    let want: Vec<(String, String, String)> =
        want.iter().map(|(a, b, c)| (a.to_string(), b.to_string(), c.to_string())).collect();
    assert_eq!(got, want);

    // CRLF and CR line ends: only the first record can be the header, lines count as Python's
    // universal newlines do, and a row of only a space is a 1-field record
    for (data, line, byte) in [
        ("1\ta\tb\r\nid\tx\ty\r\nx\r\n", 3, 15),
        ("1\ta\tb\rid\tx\ty\rx\r", 3, 13),
        ("id\ttext\ttitle\r\n1\ta\tb\r\n \r\n", 3, 22),
    ] {
        std::fs::write(dir.path().join("crlf.tsv"), data).unwrap();
        let err = run(&[dir.path().join("crlf.tsv")], &dir.path().join("crlf"), &opts()).unwrap_err();
        assert!(
            matches!(err, CorpusError::BadInput { at: Location::Record { line: l, byte: b }, .. } if l == line && b == byte),
            "{data:?}: {err}"
        );
        let c = ingest_ok(
            &[dir.path().join("crlf.tsv")],
            &dir.path().join("crlf"),
            &IngestOptions { skip_bad: true, ..opts() },
        );
        assert_eq!(c.manifest.counts.bad_records, 1, "{data:?}");
        std::fs::remove_dir_all(dir.path().join("crlf")).unwrap();
    }
}

#[test]
fn existing_output_needs_force() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    ingest_ok(&[dump()], &out, &opts());
    assert!(matches!(run(&[dump()], &out, &opts()), Err(CorpusError::OutputExists { .. })));
    let o = IngestOptions { force: true, words: 30, ..opts() };
    let c = ingest_ok(&[dump()], &out, &o);
    assert_eq!(c.manifest.options["words"], 30);
    // no staging directories remain
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
}

#[test]
fn unknown_format_is_explained() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("x.jsonl");
    std::fs::write(&path, "{\"foo\": 1}\n").unwrap();
    let err = run(&[path], &dir.path().join("out"), &opts()).unwrap_err();
    assert!(matches!(err, CorpusError::UnknownFormat { .. }), "{err}");
    assert!(err.to_string().contains("--format"));
}

#[test]
fn an_unfinished_directory_is_not_a_corpus() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("half")).unwrap();
    let err = r1s_corpus::Corpus::open(&dir.path().join("half")).unwrap_err();
    assert!(matches!(err, CorpusError::BadCorpus { .. }), "{err}");
}
