# Airlock as a Nomad system job: one cluster node on every eligible client.
# Nomad 1.6 or later (Nomad variables, checks on Nomad services, "*" as
# datacenter).
#
#   nomad var put nomad/jobs/airlock cluster_secret=@cluster-secret
#   nomad job run \
#     -var 'etcd=etcd://10.0.0.11:2379,10.0.0.12:2379,10.0.0.13:2379' \
#     -var 'airlock_url=https://downloads.invalid/airlock/airlock-x86_64-linux' \
#     airlock.nomad.hcl
#
# Why raw_exec and not docker (or exec): Airlock must be root in the host's
# namespaces. It makes every sandbox's namespaces, cgroups (under
# /sys/fs/cgroup/airlock), overlay and loop mounts, veth pairs and
# iptables/nftables rules on the host itself, and its sandboxes outlive the
# server: they keep running across a restart or an upgrade of the task and
# the next allocation adopts them. Inside a container they would live in the
# container's PID and mount namespaces and die with it, and the exec driver's
# chroot and isolation would get in the way just the same. So the client
# must enable raw_exec:
#
#   plugin "raw_exec" {
#     config { enabled = true }
#   }
#
# and the Nomad client runs as root (as it does by default). raw_exec gives
# the task the full power of root on the client: run this job only on
# clients dedicated to sandboxes (see the constraint below).

variable "airlock_url" {
  type        = string
  description = "Where clients download the airlock binary (one static Linux executable)."
  default     = "https://downloads.invalid/airlock"
}

variable "etcd" {
  type        = string
  description = "The cluster's etcd (v3 API), every member: etcd://host:2379,host:2379,host:2379"
  default     = "etcd://etcd-1.cluster.invalid:2379,etcd-2.cluster.invalid:2379,etcd-3.cluster.invalid:2379"
}

variable "datacenters" {
  type    = list(string)
  default = ["*"]
}

variable "service_provider" {
  type        = string
  description = "Where the service is registered: \"nomad\" (built-in) or \"consul\"."
  default     = "nomad"
}

job "airlock" {
  type        = "system"
  datacenters = var.datacenters

  constraint {
    attribute = "${attr.kernel.name}"
    value     = "linux"
  }

  # Only on the clients meant for sandboxes, e.g. with
  # `client { meta { airlock = "true" } }` in their agent configuration.
  # constraint {
  #   attribute = "${meta.airlock}"
  #   value     = "true"
  # }

  # One node at a time on a new version; sandboxes keep running meanwhile.
  update {
    max_parallel     = 1
    min_healthy_time = "20s"
    healthy_deadline = "5m"
  }

  group "airlock" {
    network {
      # The API and every sandbox connection, on the host's own network.
      port "http" {
        static = 3000
      }
    }

    # Every node serves the whole API and the sandbox proxy, so a load
    # balancer may send anything to any healthy instance.
    service {
      name     = "airlock"
      port     = "http"
      provider = var.service_provider

      check {
        name     = "airlock health"
        type     = "http"
        path     = "/health"
        interval = "10s"
        timeout  = "3s"
      }
    }

    restart {
      attempts = 10
      interval = "5m"
      delay    = "5s"
      mode     = "delay"
    }

    task "airlock" {
      driver = "raw_exec"

      # A plain executable. Pin it with a checksum in production:
      # options { checksum = "sha256:..." }
      artifact {
        source      = var.airlock_url
        destination = "local/airlock"
        mode        = "file"
      }

      # The shared secret node-to-node requests carry, from the Nomad
      # variable at nomad/jobs/airlock (readable by this job's tasks). The
      # same value on every node, at least 32 characters.
      template {
        destination = "${NOMAD_SECRETS_DIR}/cluster-secret"
        perms       = "0600"
        change_mode = "restart"
        data        = <<-EOT
        {{- with nomadVar "nomad/jobs/airlock" -}}{{ .cluster_secret }}{{- end -}}
        EOT
      }

      config {
        # Artifacts come without the execute bit: set it, then become airlock
        # (exec keeps the PID, so Nomad's signals reach the server itself).
        command = "/bin/sh"
        args = [
          "-c", "chmod 0755 local/airlock && exec local/airlock \"$@\"", "airlock",
          "serve",
          "--listen", "0.0.0.0:${NOMAD_PORT_http}",
          "--data-dir", "/var/lib/airlock",
          "--cluster", var.etcd,
          "--advertise", "http://${attr.unique.network.ip-address}:${NOMAD_PORT_http}",
          "--node-name", "${node.unique.name}",
          "--cluster-secret-file", "${NOMAD_SECRETS_DIR}/cluster-secret",
        ]
      }

      # Stopping the task stops only the server: sandboxes are in cgroups of
      # their own (not the task's) and keep running; the next allocation on
      # this client adopts them. The server exits within seconds of SIGTERM.
      kill_signal  = "SIGTERM"
      kill_timeout = "30s"

      # The server's own needs. Sandboxes are outside the task's cgroup, so
      # Nomad neither counts nor limits them: keep these clients for Airlock.
      resources {
        cpu    = 500
        memory = 1024
      }
    }
  }
}
