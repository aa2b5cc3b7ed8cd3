//! Waiting for vSphere tasks.
//!
//! [`wait_for_task`] polls the task's `info` with the property collector,
//! sleeping between polls as the client's task [`Backoff`] says (100 ms
//! growing to 2 s by default), until the state is `success` or `error`, or
//! the client's task timeout passes. vcsim completes tasks before the
//! `*_Task` call returns; a real vCenter takes seconds to minutes, which is
//! what the backoff is for. A task error (`info.error`, a
//! `LocalizedMethodFault`) is mapped like a SOAP fault
//! ([`crate::fault_to_error`]).
//!
//! [`Backoff`]: hypersdk_core::retry::Backoff
//!
//! ```no_run
//! # async fn demo(client: &hypersdk_vsphere::Client, task: hypersdk_vsphere::types::MoRef) -> hypersdk_core::Result<()> {
//! let info = hypersdk_vsphere::tasks::wait_for_task(client, &task, "PowerOnVM_Task on vm-42").await?;
//! assert_eq!(info.state, hypersdk_vsphere::tasks::TaskState::Success);
//! # Ok(()) }
//! ```

use hypersdk_core::{Error, Result};

use crate::client::{Client, fault_to_error};
use crate::property::retrieve_one;
use crate::soap::{Node, VimFault};
use crate::types::MoRef;

/// The state of a task.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum TaskState {
    /// Waiting to run.
    Queued,
    /// Running.
    Running,
    /// Done.
    Success,
    /// Failed; see [`TaskInfo::error`].
    Error,
}

/// What the server says about a task (`TaskInfo`).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct TaskInfo {
    /// The task.
    pub task: MoRef,
    /// Its state.
    pub state: TaskState,
    /// Percent done, while running (real servers only).
    pub progress: Option<i64>,
    /// The result (`info.result`), e.g. the new snapshot's moref.
    pub result: Option<Node>,
    /// The error, in state [`TaskState::Error`].
    pub error: Option<VimFault>,
    /// The task's name (`CreateSnapshot_Task`; vcsim: `CreateSnapshot`).
    pub name: Option<String>,
}

impl TaskInfo {
    /// Reads a `TaskInfo` value.
    pub fn from_node(task: &MoRef, n: &Node) -> Result<Self> {
        let state = match n.text_at(&["state"]).map(str::trim) {
            Some("queued") => TaskState::Queued,
            Some("running") => TaskState::Running,
            Some("success") => TaskState::Success,
            Some("error") => TaskState::Error,
            other => {
                return Err(Error::invalid_data(
                    format!("{task}"),
                    format!("unknown task state {other:?}"),
                ));
            }
        };
        Ok(TaskInfo {
            task: task.clone(),
            state,
            progress: n.int_at(&["progress"]),
            result: n.child("result").cloned(),
            error: n.child("error").map(VimFault::from_localized),
            name: n.text_at(&["name"]).map(str::to_owned),
        })
    }

    /// The result as a moref (`CreateSnapshot_Task` → the snapshot).
    pub fn result_moref(&self) -> Option<MoRef> {
        self.result.as_ref()?.as_moref()
    }
}

/// Reads a task's current `info`.
///
/// # Errors
///
/// [`Error::NotFound`] for an unknown task, else the mapped fault.
pub async fn task_info(client: &Client, task: &MoRef) -> Result<TaskInfo> {
    let props = retrieve_one(client, task, &["info"]).await?;
    let info = props
        .prop("info")
        .ok_or_else(|| Error::invalid_data(format!("{task}"), "the task has no info property"))?;
    TaskInfo::from_node(task, info)
}

/// Waits until `task` succeeds or fails. `what` names the operation in
/// errors (`CreateSnapshot_Task on VirtualMachine 'vm-42'`).
///
/// # Errors
///
/// The task's error mapped to a core error; [`Error::Timeout`] after the
/// client's task timeout, naming the task and saying it may still be
/// running (waiting gives up, the task is not cancelled); errors reading
/// the task.
pub async fn wait_for_task(client: &Client, task: &MoRef, what: &str) -> Result<TaskInfo> {
    let started = tokio::time::Instant::now();
    let mut polls: u32 = 0;
    loop {
        let info = task_info(client, task).await?;
        match info.state {
            TaskState::Success => return Ok(info),
            TaskState::Error => {
                let fault = info
                    .error
                    .clone()
                    .unwrap_or_else(|| VimFault::new("", "the task failed without an error"));
                return Err(fault_to_error(fault, what));
            }
            TaskState::Queued | TaskState::Running => {}
        }
        polls = polls.saturating_add(1);
        let delay = client.task_poll().jittered_delay(polls);
        if let Some(limit) = client.task_timeout()
            && started.elapsed() + delay > limit
        {
            return Err(Error::Timeout {
                operation: format!(
                    "waiting for {what} ({task}; it may still be running on the server: \
                     check or cancel that task before repeating the operation)"
                ),
                after: limit,
            });
        }
        tracing::trace!(task = %task.value, progress = ?info.progress, "waiting for vSphere task");
        tokio::time::sleep(delay).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::soap::parse_document;
    use hypersdk_core::ErrorKind;

    #[test]
    fn task_error_is_mapped() {
        // vcsim's TaskInfo of a failed PowerOnVM_Task.
        let xml = r#"<val xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance" xsi:type="TaskInfo"><key>task-76</key><task type="Task">task-76</task><name>PowerOn</name>
 <state>error</state><cancelled>false</cancelled>
 <error><fault xsi:type="InvalidPowerState"><requestedState>poweredOn</requestedState><existingState>poweredOn</existingState></fault>
        <localizedMessage>*types.InvalidPowerState</localizedMessage></error></val>"#;
        let node = parse_document(xml.as_bytes()).unwrap();
        let info = TaskInfo::from_node(&MoRef::new("Task", "task-76"), &node).unwrap();
        assert_eq!(info.state, TaskState::Error);
        let f = info.error.unwrap();
        assert_eq!(f.fault_type, "InvalidPowerState");
        let e = fault_to_error(f, "PowerOnVM_Task");
        assert_eq!(e.kind(), ErrorKind::Conflict);
        assert!(e.to_string().contains("InvalidPowerState"), "{e}");
    }

    #[test]
    fn task_result_moref() {
        let xml = r#"<val xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance"><state>success</state><result xsi:type="ManagedObjectReference" type="VirtualMachineSnapshot">snapshot-69</result></val>"#;
        let node = parse_document(xml.as_bytes()).unwrap();
        let info = TaskInfo::from_node(&MoRef::new("Task", "t"), &node).unwrap();
        assert_eq!(
            info.result_moref(),
            Some(MoRef::new("VirtualMachineSnapshot", "snapshot-69"))
        );
    }
}
