# frozen_string_literal: true

# Helpers of session 6's :mysql review specs (spec/mysql_review_*_spec.rb).
module MysqlReviewHelpers
  # A thread whose exception is for #value, not for the log.
  def quiet_thread(&block)
    t = Thread.new do
      Thread.current.report_on_exception = false
      block.call
    end
    (@review_threads ||= []) << t
    t
  end

  # Runs `body` in a thread of its own that stops once, at the first
  # TracePoint `event` for which `match` is true, to run `pause` there.
  # @return [Thread]
  def hooked_thread(event, match, pause, &body)
    quiet_thread do
      Thread.current[:review_hook] = true
      hook = TracePoint.new(event) do |tp|
        next unless Thread.current[:review_hook] && match.call(tp)

        Thread.current[:review_hook] = false
        pause.call
      end
      hook.enable(target_thread: Thread.current, &body)
    end
  end

  # Runs each taker `rounds` times, each in a thread of its own; a taker
  # is called with a block to run inside its lock.
  # @return [Array(Array, Integer)] the takers' results, and the most
  #   threads that were ever inside at once
  def most_inside(takers, rounds)
    inside = 0
    most = 0
    count = Mutex.new
    threads = takers.map do |take|
      quiet_thread do
        Array.new(rounds) do
          take.call do
            count.synchronize { most = [most, inside += 1].max }
            Thread.pass
            count.synchronize { inside -= 1 }
          end
        end
      end
    end
    [Timeout.timeout(60) { threads.flat_map(&:value) }, most]
  end

  # Whether a new thread can take `id` now (it gives it back at once).
  def taken_elsewhere?(id)
    quiet_thread do
      lock = MegaMutex::Lock.new(id, timeout: 0)
      taken = lock.try_lock
      lock.unlock if taken
      taken
    end.value
  end

  # The top of a child process's script: the gem, and MegaMutex on `url`
  # (backend :mysql) in this example's namespace with `settings`.
  def review_script_prelude(url, **settings)
    lines = settings.map { |name, value| "  c.#{name} = #{value.inspect}" }.join("\n")
    <<~RUBY
      $LOAD_PATH.unshift(#{File.join(SpecHelpers::ROOT, 'lib').inspect})
      require "mega_mutex/distributed_mutex"
      $stdout.sync = true
      MegaMutex.configure do |c|
        c.backend = :mysql
        c.mysql_url = #{url.inspect}
        c.namespace = #{@namespace.inspect}
      #{lines}
      end
    RUBY
  end
end
