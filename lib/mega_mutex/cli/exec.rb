# frozen_string_literal: true

module MegaMutex
  class CLI
    # `mega_mutex exec`: holds the lock while COMMAND runs, forwards signals,
    # and makes sure COMMAND never outlives mega_mutex (see {Guard}).
    # @api private
    module Exec
      private

      def hold_and_run(lock, name, command, timeout)
        @state = :waiting
        @child = nil
        @pending = []
        status = nil
        previous = install_traps
        live = start_live_line(name, timeout)
        begin
          lock.synchronize do
            @state = :holding
            live&.stop
            status = run_child(command, lock.fencing_token)
          end
          status
        rescue TimeoutError => e
          live&.stop
          holder = e.holder || current_holder(name)
          error("#{name} is held by #{holder || 'another process'}; " \
                "#{timeout.to_f.zero? ? 'not waiting (use --timeout S or --wait)' : "gave up after #{timeout} s"}")
          EX_TEMPFAIL
        rescue LockLostError => e
          error("warning: #{e.message}; another process may have run while COMMAND did")
          status.nil? || status.zero? ? EX_SOFTWARE : status
        rescue ConnectionError, ServerError => e
          raise if status.nil?

          error("warning: could not release #{name} (#{e.message}); it frees itself when its lease runs out")
          status
        rescue SignalException => e
          live&.stop
          128 + e.signo
        ensure
          live&.stop
          @state = :done
          restore_traps(previous)
        end
      end

      def current_holder(name)
        MegaMutex.get_current_lock(name)
      rescue Error
        nil
      end

      # Traps TERM, INT and HUP: while waiting they end the wait (exit 128+N);
      # while COMMAND runs they are forwarded to it. A signal ignored when
      # mega_mutex started (nohup, a background job) stays ignored, for
      # mega_mutex and for COMMAND alike.
      def install_traps
        FORWARDED_SIGNALS.to_h do |sig|
          previous = trap(sig) { |signo| on_signal(signo) }
          trap(sig, "IGNORE") if previous == "IGNORE"
          [sig, previous]
        end
      end

      def restore_traps(previous)
        previous.each { |sig, handler| trap(sig, handler.nil? ? "DEFAULT" : handler) }
      end

      def on_signal(signo)
        case @state
        # Thread#raise, unlike raise, waits while the lock's bookkeeping runs
        # with interrupts deferred; it still ends the wait itself at once.
        when :waiting then Thread.main.raise(SignalException.new(signo))
        when :holding
          if @child
            begin
              Process.kill(signo, @child)
            rescue SystemCallError
              nil
            end
          else
            @pending << signo
          end
        end
        # :done: COMMAND has finished; mega_mutex only releases the lock and exits.
      end

      # Runs COMMAND in the process group of a {Guard}, hands it the terminal
      # when mega_mutex has it, and waits for it. COMMAND gets the take's
      # fencing token as MEGA_MUTEX_FENCING_TOKEN (a decimal Integer that grows
      # across holders; unset when the backend gives none, even if inherited).
      # @param fencing_token [Integer, nil]
      # @return [Integer] the exit status to report
      def run_child(command, fencing_token = nil)
        return 128 + @pending.first unless @pending.empty?

        guard = Guard.start
        # The terminal goes to COMMAND's group before COMMAND exists: a
        # COMMAND that read it first, from a background group, would stop.
        terminal = Terminal.hand_over(guard.pgid)
        begin
          env = { "MEGA_MUTEX_FENCING_TOKEN" => fencing_token&.to_s }
          pid = Process.spawn(env, [command.first, command.first], *command.drop(1), pgroup: guard.pgid)
        rescue SystemCallError => e
          terminal&.take_back
          guard.dismiss
          return spawn_failure(command.first, e)
        end
        @child = pid
        @pending.each { |signo| Process.kill(signo, pid) }
        @pending.clear
        status = wait_child(pid, guard, terminal)
        @child = nil # before any other signal could be sent to a reused pid
        @state = :done
        terminal&.take_back
        guard.dismiss
        status.exited? ? status.exitstatus : 128 + status.termsig
      end

      # Waits for COMMAND. On a terminal, a COMMAND stopped by Ctrl-Z stops
      # mega_mutex too, so that the shell sees its job stopped; `fg` resumes
      # both.
      def wait_child(pid, guard, terminal)
        loop do
          _, status = Process.wait2(pid, terminal ? Process::WUNTRACED : 0)
          return status unless status.stopped?

          terminal.take_back
          Process.kill(:STOP, Process.pid)
          # Continued (fg): give the terminal back and wake COMMAND's group.
          terminal.hand_over_again
          Process.kill(:CONT, -guard.pgid)
        end
      end

      def spawn_failure(program, exception)
        case exception
        when Errno::ENOENT
          # As the shell says it: a path that does not exist, or a name not in PATH.
          error(program.include?("/") ? "#{program}: No such file or directory" : "#{program}: command not found")
          EX_NOTFOUND
        else
          error("#{program}: cannot execute: #{exception.message.sub(/ - .*\z/m, '')}")
          EX_NOEXEC
        end
      end

      def start_live_line(name, timeout)
        return nil if timeout&.zero?
        return nil unless @err.respond_to?(:tty?) && @err.tty?

        LiveLine.new(@err, name, timeout)
      end
    end

    # Makes COMMAND die with mega_mutex. A guard is a tiny `sh`, leader of a
    # process group of its own in which COMMAND then runs, reading a pipe whose
    # only writer is mega_mutex. When COMMAND has exited, mega_mutex writes a
    # line and the guard exits quietly. If mega_mutex dies first - kill -9, a
    # crash, the OOM killer - the kernel closes the pipe, the guard reads EOF
    # and kills its whole process group (COMMAND and everything COMMAND started
    # that stayed in it) with SIGKILL, at once: long before the lock's lease
    # can run out and another process take it. The guard ignores the signals a
    # terminal or a forwarded signal could send it.
    # @api private
    class Guard
      # The guard's shell script: `read` fails only at EOF without a line.
      SCRIPT = 'trap "" INT TERM HUP QUIT TSTP TTIN TTOU; read -r _ || kill -KILL 0'

      # @return [Integer] the process group COMMAND joins (the guard's pid)
      attr_reader :pgid

      # Starts a guard.
      # @return [Guard]
      def self.start
        reader, writer = IO.pipe # close-on-exec: COMMAND never holds the writer
        pid = begin
          Process.spawn("/bin/sh", "-c", SCRIPT, in: reader, out: File::NULL, err: File::NULL, pgroup: true)
        ensure
          reader.close
        end
        new(pid, writer)
      end

      # @param pid [Integer]
      # @param writer [IO]
      def initialize(pid, writer)
        @pgid = pid
        @writer = writer
      end

      # COMMAND is over: lets the guard exit without killing anything.
      # @return [void]
      def dismiss
        begin
          @writer.write("\n")
        rescue IOError, SystemCallError
          nil # the guard is gone already
        end
        @writer.close
        Process.wait(@pgid)
      rescue SystemCallError
        nil
      end
    end

    # The controlling terminal, handed to COMMAND's process group while it
    # runs (so COMMAND can read it, and Ctrl-C and Ctrl-Z reach it), and taken
    # back afterwards. Only when mega_mutex's stdin is a terminal and
    # mega_mutex is its foreground process group.
    # @api private
    class Terminal
      # Hands the terminal on stdin to process group `pgid`, if mega_mutex has it.
      # @param pgid [Integer]
      # @return [Terminal, nil] nil when there is nothing to hand over
      def self.hand_over(pgid)
        return nil unless $stdin.tty?

        functions = libc
        return nil if functions.nil? || functions[:get].call($stdin.fileno) != Process.getpgrp

        terminal = new(functions, pgid)
        terminal.hand_over_again ? terminal : nil
      end

      # @return [Hash, nil] tcgetpgrp and tcsetpgrp, through Fiddle
      def self.libc
        return @libc if defined?(@libc)

        @libc = begin
          require "fiddle"
          handle = Fiddle.dlopen(nil)
          int = Fiddle::TYPE_INT
          { get: Fiddle::Function.new(handle["tcgetpgrp"], [int], int),
            set: Fiddle::Function.new(handle["tcsetpgrp"], [int, int], int) }
        rescue LoadError, StandardError
          nil # no Fiddle: COMMAND runs without the terminal's foreground
        end
      end

      # @param functions [Hash]
      # @param pgid [Integer]
      def initialize(functions, pgid)
        @functions = functions
        @pgid = pgid
        @home = Process.getpgrp
      end

      # Gives the terminal to COMMAND's process group.
      # @return [Boolean] true if it was given
      def hand_over_again
        set(@pgid)
      end

      # Takes the terminal back for mega_mutex's own process group.
      # @return [Boolean]
      def take_back
        set(@home)
      end

      private

      # tcsetpgrp from a background group raises SIGTTOU unless it is ignored.
      def set(pgid)
        previous = trap("TTOU", "IGNORE")
        @functions[:set].call($stdin.fileno, pgid).zero?
      ensure
        trap("TTOU", previous || "DEFAULT")
      end
    end
  end
end
