# Airlock R kernel driver: one R session. Each request line on fd 4 is a
# cell file, then tab-separated NAME=HEX environment variables for that
# cell only. The cell is parsed and evaluated expression by expression in
# the global environment (so state persists); visible values print as at
# the console, the last one is the cell's result. JSON lines on fd 3 report
# results, errors and completion; output goes to fd 1/2.
local({
  ev <- file("/dev/fd/3", open = "w")
  rq <- file("/dev/fd/4", open = "r", raw = TRUE)
  jstr <- function(s) {
    s <- enc2utf8(paste(as.character(s), collapse = "\n"))
    s <- gsub("\\", "\\\\", s, fixed = TRUE)
    s <- gsub("\"", "\\\"", s, fixed = TRUE)
    s <- gsub("\n", "\\n", s, fixed = TRUE)
    s <- gsub("\r", "\\r", s, fixed = TRUE)
    s <- gsub("\t", "\\t", s, fixed = TRUE)
    s <- gsub("[[:cntrl:]]", "", s)
    paste0("\"", s, "\"")
  }
  emit <- function(...) {
    writeLines(paste0(...), ev, useBytes = TRUE)
    flush(ev)
  }
  emit_error <- function(name, value, tb) {
    emit("{\"type\":\"error\",\"name\":", jstr(name), ",\"value\":", jstr(value), ",\"traceback\":", jstr(tb), "}")
  }
  unhex <- function(h) {
    if (!nzchar(h)) return("")
    rawToChar(as.raw(strtoi(substring(h, seq(1, nchar(h), 2), seq(2, nchar(h), 2)), 16L)))
  }
  count <- 0L
  emit("{\"type\":\"ready\"}")
  repeat {
    req <- readLines(rq, n = 1L, encoding = "UTF-8")
    if (length(req) == 0L) break
    p <- strsplit(req, "\t", fixed = TRUE)[[1]]
    count <- count + 1L
    vars <- p[-1]
    old <- if (length(vars)) Sys.getenv(sub("=.*$", "", vars), unset = NA, names = TRUE) else character()
    for (v in vars) {
      k <- sub("=.*$", "", v)
      do.call(Sys.setenv, stats::setNames(list(unhex(sub("^[^=]*=", "", v))), k))
    }
    exprs <- tryCatch(parse(file = p[1], keep.source = FALSE, encoding = "UTF-8"), error = function(e) e)
    if (inherits(exprs, "error")) {
      emit_error("SyntaxError", conditionMessage(exprs), conditionMessage(exprs))
    } else {
      n <- length(exprs)
      for (i in seq_len(n)) {
        ok <- TRUE
        r <- tryCatch(
          withCallingHandlers(withVisible(eval(exprs[[i]], envir = globalenv())),
            warning = function(w) {
              message("Warning message:\n", conditionMessage(w))
              invokeRestart("muffleWarning")
            }),
          error = function(e) {
            ok <<- FALSE
            call <- conditionCall(e)
            # A top-level stop() names this driver's eval: leave it out.
            if (is.call(call) && identical(call[[1]], quote(eval))) call <- NULL
            head <- if (is.null(call)) "Error: " else paste0("Error in ", paste(deparse(call), collapse = " "), ": ")
            emit_error(class(e)[1], conditionMessage(e), paste0(head, conditionMessage(e)))
          },
          interrupt = function(e) {
            ok <<- FALSE
            emit_error("KeyboardInterrupt", "interrupted", "")
          })
        if (!ok) break
        if (isTRUE(r$visible)) {
          if (i == n) {
            txt <- paste(utils::capture.output(print(r$value)), collapse = "\n")
            emit("{\"type\":\"result\",\"is_main_result\":true,\"text\":", jstr(txt), "}")
          } else {
            print(r$value)
          }
        }
      }
    }
    for (k in names(old)) {
      if (is.na(old[[k]])) Sys.unsetenv(k) else do.call(Sys.setenv, stats::setNames(list(old[[k]]), k))
    }
    unlink(p[1])
    flush(stdout())
    flush(stderr())
    emit("{\"type\":\"done\",\"execution_count\":", count, "}")
  }
})
