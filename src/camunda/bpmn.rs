//! Reads a process definition's BPMN 2.0 XML for one question: would a BPMN error with a given
//! code, thrown by a given activity, be caught? Camunda answers an uncaught `bpmnError` from an
//! external task by ending the path as if the task had succeeded, so the reporter asks this
//! before throwing and raises an incident instead when the answer is no.
//!
//! Caught means: an error boundary event on the activity or on an enclosing subprocess, or an
//! error start event of an event subprocess in the activity's scope or an enclosing one, whose
//! error definition names the code or names none (catch-all). Errors that would travel up to a
//! calling process through a call activity are not followed: they count as uncaught, so the
//! worst case is an incident, never a silent completion.

use std::collections::HashMap;

/// What one catching event accepts.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Catch {
    All,
    Code(String),
}

impl Catch {
    fn accepts(&self, code: &str) -> bool {
        match self {
            Catch::All => true,
            Catch::Code(c) => c == code,
        }
    }
}

/// The error-catching structure of one process definition.
#[derive(Debug, Default)]
pub struct ErrorCatchers {
    /// Flow element id → id of the scope (process or subprocess) it sits in.
    scope_of: HashMap<String, String>,
    /// Activity id → what its error boundary events accept.
    boundary: HashMap<String, Vec<Catch>>,
    /// Scope id → what the error start events of its event subprocesses accept.
    event_subprocess: HashMap<String, Vec<Catch>>,
}

/// Elements that hold flow elements of their own.
fn is_scope(name: &str) -> bool {
    matches!(name, "process" | "subProcess" | "transaction" | "adHocSubProcess")
}

impl ErrorCatchers {
    /// Parses a definition's XML (`bpmn20Xml` of `GET /process-definition/{id}/xml`).
    pub fn parse(xml: &str) -> Result<Self, String> {
        let doc = roxmltree::Document::parse(xml).map_err(|e| format!("unreadable BPMN: {e}"))?;
        let codes: HashMap<&str, Option<&str>> = doc
            .descendants()
            .filter(|n| n.tag_name().name() == "error")
            .filter_map(|n| Some((n.attribute("id")?, n.attribute("errorCode").filter(|c| !c.is_empty()))))
            .collect();
        // An error definition without a reference, or referring to an error without a code,
        // catches every error.
        let catch_of = |event: roxmltree::Node| -> Option<Catch> {
            let def = event.children().find(|c| c.tag_name().name() == "errorEventDefinition")?;
            Some(match def.attribute("errorRef").and_then(|r| codes.get(r).copied()) {
                Some(Some(code)) => Catch::Code(code.to_owned()),
                Some(None) => Catch::All,
                None if def.attribute("errorRef").is_none() => Catch::All,
                // A reference to no declared error: Camunda takes the reference itself as the code.
                None => Catch::Code(def.attribute("errorRef").unwrap_or_default().to_owned()),
            })
        };
        let mut catchers = ErrorCatchers::default();
        for node in doc.descendants().filter(roxmltree::Node::is_element) {
            let Some(id) = node.attribute("id") else { continue };
            let scope = node.ancestors().skip(1).find(|a| is_scope(a.tag_name().name()));
            if let Some(scope_id) = scope.and_then(|s| s.attribute("id")) {
                catchers.scope_of.insert(id.to_owned(), scope_id.to_owned());
            }
            match node.tag_name().name() {
                "boundaryEvent" => {
                    if let (Some(attached), Some(catch)) = (node.attribute("attachedToRef"), catch_of(node)) {
                        catchers.boundary.entry(attached.to_owned()).or_default().push(catch);
                    }
                }
                "startEvent" => {
                    let Some(parent) = node.parent_element() else { continue };
                    let in_event_subprocess = parent.tag_name().name() == "subProcess"
                        && parent.attribute("triggeredByEvent") == Some("true");
                    let outer = parent.ancestors().skip(1).find(|a| is_scope(a.tag_name().name()));
                    if let (true, Some(catch), Some(outer)) =
                        (in_event_subprocess, catch_of(node), outer.and_then(|o| o.attribute("id")))
                    {
                        catchers.event_subprocess.entry(outer.to_owned()).or_default().push(catch);
                    }
                }
                _ => {}
            }
        }
        Ok(catchers)
    }

    /// Whether an error with `code` thrown by `activity` is caught anywhere up its scopes.
    pub fn catches(&self, activity: &str, code: &str) -> bool {
        let accepts = |list: Option<&Vec<Catch>>| list.is_some_and(|l| l.iter().any(|c| c.accepts(code)));
        let mut current = activity;
        // Scopes nest as the XML does; the bound only guards against a malformed cycle.
        for _ in 0..64 {
            if accepts(self.boundary.get(current)) {
                return true;
            }
            let Some(scope) = self.scope_of.get(current) else { return false };
            if accepts(self.event_subprocess.get(scope)) {
                return true;
            }
            current = scope;
        }
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn process(body: &str) -> String {
        format!(
            r#"<?xml version="1.0"?><bpmn:definitions xmlns:bpmn="http://www.omg.org/spec/BPMN/20100524/MODEL" id="d">
            <bpmn:error id="e_val" errorCode="ERR_VAL"/><bpmn:error id="e_any"/>
            <bpmn:process id="p">{body}</bpmn:process></bpmn:definitions>"#
        )
    }

    #[test]
    fn a_boundary_event_catches_its_code_only() {
        let xml = process(
            r#"<bpmn:serviceTask id="t"/><bpmn:boundaryEvent id="b" attachedToRef="t">
               <bpmn:errorEventDefinition errorRef="e_val"/></bpmn:boundaryEvent>"#,
        );
        let c = ErrorCatchers::parse(&xml).expect("parses");
        assert!(c.catches("t", "ERR_VAL"));
        assert!(!c.catches("t", "ERR_OTHER"));
        assert!(!c.catches("elsewhere", "ERR_VAL"));
    }

    #[test]
    fn no_reference_or_an_error_without_code_catches_all() {
        for def in [r#"<bpmn:errorEventDefinition/>"#, r#"<bpmn:errorEventDefinition errorRef="e_any"/>"#] {
            let xml = process(&format!(
                r#"<bpmn:serviceTask id="t"/><bpmn:boundaryEvent id="b" attachedToRef="t">{def}</bpmn:boundaryEvent>"#
            ));
            assert!(ErrorCatchers::parse(&xml).expect("parses").catches("t", "ANYTHING"), "{def}");
        }
    }

    #[test]
    fn a_timer_boundary_catches_nothing() {
        let xml = process(
            r#"<bpmn:serviceTask id="t"/><bpmn:boundaryEvent id="b" attachedToRef="t">
               <bpmn:timerEventDefinition/></bpmn:boundaryEvent>"#,
        );
        assert!(!ErrorCatchers::parse(&xml).expect("parses").catches("t", "ERR_VAL"));
    }

    #[test]
    fn an_event_subprocess_or_an_enclosing_subprocess_boundary_catches() {
        let xml = process(
            r#"<bpmn:subProcess id="outer"><bpmn:serviceTask id="t"/></bpmn:subProcess>
               <bpmn:boundaryEvent id="b" attachedToRef="outer"><bpmn:errorEventDefinition errorRef="e_val"/></bpmn:boundaryEvent>
               <bpmn:subProcess id="esp" triggeredByEvent="true">
                 <bpmn:startEvent id="s"><bpmn:errorEventDefinition errorRef="e_other_undeclared"/></bpmn:startEvent>
               </bpmn:subProcess>
               <bpmn:serviceTask id="top"/>"#,
        );
        let c = ErrorCatchers::parse(&xml).expect("parses");
        assert!(c.catches("t", "ERR_VAL"), "boundary on the enclosing subprocess");
        assert!(c.catches("t", "e_other_undeclared"), "the process's event subprocess");
        assert!(c.catches("top", "e_other_undeclared"));
        assert!(!c.catches("top", "ERR_VAL"), "the subprocess boundary does not cover the outside");
    }

    #[test]
    fn garbage_is_an_error() {
        assert!(ErrorCatchers::parse("<not-closed").is_err());
    }
}
